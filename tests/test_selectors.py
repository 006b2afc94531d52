"""Type selectors: ``"@kernels"``, ``"@biases"``, ``"@<TypeGlob>.<param glob>"``, ``"@<TypeGlob>"``."""

import copy
import json

import pytest
import torch
from torch import nn

import reglab
from reglab import L1, L2


class Net(nn.Module):
    """Conv2d + BatchNorm2d + ReLU on an image, Embedding + LayerNorm on tokens, a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU()
        self.emb = nn.Embedding(5, 3)
        self.ln = nn.LayerNorm(3)
        self.head = nn.Linear(2 * 4 * 4 + 3, 1)

    def forward(self, x, tokens):
        h = self.relu(self.bn(self.conv(x))).flatten(1)
        e = self.ln(self.emb(tokens)).mean(1)
        return self.head(torch.cat([h, e], dim=1))


def net(seed=0):
    torch.manual_seed(seed)
    m = Net().double()
    with torch.no_grad():  # norm parameters away from their 1/0 init, so that a wrong selection shows
        for p in (m.bn.weight, m.bn.bias, m.ln.weight, m.ln.bias):
            p.add_(torch.randn_like(p))
    return m


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (4, 7), generator=g)


ALL = ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "emb.weight", "ln.weight", "ln.bias", "head.weight", "head.bias"]


def test_the_model_has_the_parameters_the_tests_assume():
    assert [n for n, _ in net().named_parameters()] == ALL


def test_kernels_are_conv_and_linear_weights_only():
    m = net()
    h = reglab.regularize(m, params={reglab.KERNELS: L2(0.1)})
    assert reglab.KERNELS == "@kernels"
    assert h.sources == ["conv.weight", "head.weight"]
    terms = reglab.penalties(m)
    assert list(terms) == ["conv.weight", "head.weight"]  # no bias, no norm, no embedding
    assert torch.equal(terms["conv.weight"], L2(0.1)(m.conv.weight))
    assert torch.equal(terms["head.weight"], L2(0.1)(m.head.weight))
    expected = 0.1 * (float(m.conv.weight.square().sum()) + float(m.head.weight.square().sum()))
    assert float(reglab.penalty(m)) == pytest.approx(expected, rel=1e-15)
    h.remove()
    assert reglab.penalties(m) == {}


def test_biases_are_conv_and_linear_biases_only():
    m = net()
    reglab.regularize(m, params={reglab.BIASES: L1(0.5)})
    assert reglab.BIASES == "@biases"
    terms = reglab.penalties(m)
    assert list(terms) == ["conv.bias", "head.bias"]  # not bn.bias, not ln.bias
    expected = 0.5 * (float(m.conv.bias.abs().sum()) + float(m.head.bias.abs().sum()))
    assert float(reglab.penalty(m)) == pytest.approx(expected, rel=1e-15)


def test_kernels_and_biases_together_with_a_glob_for_the_rest():
    m = net()
    reglab.regularize(m, params={"@kernels": L2(0.1), "@biases": L1(0.2), "@*Norm*.*": L2(0.3)})
    terms = reglab.penalties(m)
    assert set(terms) == set(ALL) - {"emb.weight"}
    assert float(terms["ln.bias"]) == pytest.approx(0.3 * float(m.ln.bias.square().sum()))
    assert float(terms["bn.weight"]) == pytest.approx(0.3 * float(m.bn.weight.square().sum()))


def test_type_glob_with_param_glob():
    m = net()
    reglab.regularize(m, params={"@Conv*.weight": L2(0.25), "@BatchNorm*.*": L1(1.0), "@Embedding.weight": L2(0.5)})
    terms = reglab.penalties(m)
    assert list(terms) == ["conv.weight", "bn.weight", "bn.bias", "emb.weight"]
    assert float(terms["conv.weight"]) == pytest.approx(0.25 * float(m.conv.weight.square().sum()))
    assert float(terms["bn.bias"]) == pytest.approx(float(m.bn.bias.abs().sum()))
    assert float(terms["emb.weight"]) == pytest.approx(0.5 * float(m.emb.weight.square().sum()))


def test_activity_by_module_type():
    m = net()
    reglab.regularize(m, activity={"@ReLU": L1(0.01), "@Layer*": L2(0.02)})
    x, tok = batch()
    m(x, tok)
    terms = reglab.penalties(m)
    assert list(terms) == ["relu:activity", "ln:activity"]
    relu_out = m.relu(m.bn(m.conv(x)))  # recomputed by hand below, after reading (calls record)
    ln_out = m.ln(m.emb(tok))
    assert float(terms["relu:activity"]) == pytest.approx(0.01 * float(relu_out.abs().sum()) / 4)
    assert float(terms["ln:activity"]) == pytest.approx(0.02 * float(ln_out.square().sum()) / 4)


def test_constrain_kernels_applies_after_a_step_to_conv_and_linear_weights_only():
    m = net()
    free = copy.deepcopy(m)  # the same step without the constraint
    reglab.constrain(m, {reglab.KERNELS: reglab.MaxNorm(0.05)})
    x, tok = batch()
    for model in (m, free):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model(x, tok).square().mean().backward()
        opt.step()
    for name in ALL:
        got, stepped = m.get_parameter(name), free.get_parameter(name)
        if name in ("conv.weight", "head.weight"):
            with torch.no_grad():
                want = reglab.MaxNorm(0.05)(stepped)
            assert torch.allclose(got, want, rtol=0, atol=1e-15), name
            assert not torch.allclose(got, stepped), name  # the constraint binds
        else:
            assert torch.equal(got, stepped), name


def test_subclasses_match_by_base_type():
    class MyLinear(nn.Linear):
        pass

    torch.manual_seed(0)
    m = nn.Sequential(MyLinear(2, 3), nn.Tanh(), reglab.Dense(3, 2), nn.Linear(2, 1)).double()
    assert reglab.select(m, "@kernels") == ["0.weight", "2.weight", "3.weight"]
    assert reglab.select(m, "@biases") == ["0.bias", "2.bias", "3.bias"]
    assert reglab.select(m, "@Linear.weight") == ["0.weight", "2.weight", "3.weight"]  # MRO
    assert reglab.select(m, "@MyLinear.weight") == ["0.weight"]
    assert reglab.select(m, "@Dense.*") == ["2.weight", "2.bias"]
    assert reglab.select(m, "@Linear", what="module") == ["0", "2", "3"]
    reglab.regularize(m, params={"@MyLinear.weight": L2(1.0)})
    assert float(reglab.penalty(m)) == pytest.approx(float(m[0].weight.square().sum()))


def test_select_returns_names_in_model_order():
    m = net()
    assert reglab.select(m, reglab.KERNELS) == ["conv.weight", "head.weight"]
    assert reglab.select(m, "@biases", what="parameter") == ["conv.bias", "head.bias"]
    assert reglab.select(m, "*.bias") == ["conv.bias", "bn.bias", "ln.bias", "head.bias"]  # plain glob
    assert reglab.select(m, "@*Norm*.weight") == ["bn.weight", "ln.weight"]
    assert reglab.select(m, "@Module.weight") == ["conv.weight", "bn.weight", "emb.weight", "ln.weight", "head.weight"]
    assert reglab.select(m, "@Conv*", what="module") == ["conv"]
    assert reglab.select(m, "@Net", what="module") == [""]  # the root itself
    assert reglab.select(m, "*", what="module") == ["", "conv", "bn", "relu", "emb", "ln", "head"]
    assert reglab.select(m, "@Conv3d.weight") == []  # an empty selection is not an error here...
    with pytest.raises(ValueError, match="matches no parameter name"):
        reglab.regularize(m, params={"@Conv3d.weight": L2()})  # ...but is when attaching


def test_selector_errors_name_the_problem():
    m = net()
    with pytest.raises(ValueError, match=r"parameter pattern '@Conv3d.weight' matches no parameter name; the names are: "
                                         r"'conv.weight', .*; the module types owning parameters are: Conv2d\(weight, bias\), "
                                         r"BatchNorm2d\(weight, bias\), Embedding\(weight\), LayerNorm\(weight, bias\), Linear\(weight, bias\)"):
        reglab.regularize(m, params={"@Conv3d.weight": L2()})
    with pytest.raises(ValueError, match=r"parameter pattern '@Linear.kernel' matches no parameter name"):
        reglab.constrain(m, {"@Linear.kernel": reglab.MaxNorm()})
    with pytest.raises(ValueError, match=r"module pattern '@GELU' matches no module name; the names are: '', 'conv', .*"
                                         r"the module types are: Net, Conv2d, BatchNorm2d, ReLU, Embedding, LayerNorm, Linear"):
        reglab.regularize(m, activity={"@GELU": L1()})
    with pytest.raises(ValueError, match=r"parameter pattern '@kernels' matches no parameter name"):
        reglab.regularize(nn.Sequential(nn.LayerNorm(3), nn.Embedding(2, 3)), params={"@kernels": L2()})
    with pytest.raises(ValueError, match=r"parameter 'conv.weight' is matched by two patterns, '@kernels' and '\*.weight'"):
        reglab.regularize(m, params={"@kernels": L2(), "*.weight": L1()})
    with pytest.raises(ValueError, match=r"parameter 'head.bias' is matched by two patterns, '@biases' and '@Linear.\*'"):
        reglab.regularize(m, params={"@biases": L2(), "@Linear.*": L1()})
    with pytest.raises(ValueError, match=r"'@Linear' names no parameter; write '@Linear.weight', '@Linear.\*'"):
        reglab.regularize(m, params={"@Linear": L2()})
    with pytest.raises(ValueError, match=r"'@kernels' selects parameters, not modules"):
        reglab.regularize(m, activity={"@kernels": L1()})
    with pytest.raises(ValueError, match=r"'@ReLU.weight' selects parameters, not modules"):
        reglab.regularize(m, activity={"@ReLU.weight": L1()})
    with pytest.raises(ValueError, match=r"'@kernels.weight': '@kernels' takes no parameter glob"):
        reglab.regularize(m, params={"@kernels.weight": L2()})
    with pytest.raises(ValueError, match=r"'@': empty type glob"):
        reglab.regularize(m, params={"@": L2()})
    with pytest.raises(ValueError, match=r"'@.weight': empty type glob"):
        reglab.select(m, "@.weight")
    with pytest.raises(ValueError, match=r"'@Linear.': empty parameter glob"):
        reglab.select(m, "@Linear.")
    with pytest.raises(ValueError, match=r"what must be 'parameter' or 'module'; got 'param'"):
        reglab.select(m, "@kernels", what="param")
    with pytest.raises(ValueError, match=r"model must be a torch.nn.Module; got list"):
        reglab.select([1], "@kernels")
    assert reglab.penalties(m) == {}  # nothing was attached by the failed calls


def test_match_without_a_model_says_the_selector_needs_one():
    from reglab.attach import match_names

    assert match_names(["a.weight", "b.bias"], {"*.weight": 1}, "parameter") == {"a.weight": ("*.weight", 1)}
    with pytest.raises(ValueError, match=r"parameter pattern '@kernels' is a type selector; it needs the model"):
        match_names(["a.weight"], {"@kernels": 1}, "parameter")
    m = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    names = [n for n, _ in m.named_parameters()]
    assert match_names(names, {"@kernels": 1, "1.*": 2}, "parameter", model=m) == {
        "0.weight": ("@kernels", 1), "1.weight": ("1.*", 2), "1.bias": ("1.*", 2)}


def test_tied_weight_is_selected_under_its_first_name_if_any_owner_matches():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight

    m = LM().double()
    assert [n for n, _ in m.named_parameters()] == ["emb.weight"]
    assert reglab.select(m, "@kernels") == ["emb.weight"]  # one tensor: the Linear's kernel is the table
    reglab.regularize(m, params={"@kernels": L2(1.0)})
    assert list(reglab.penalties(m)) == ["emb.weight"]
    assert float(reglab.penalty(m)) == pytest.approx(float(m.emb.weight.square().sum()))


def test_kernels_cover_every_kernel_layer_type_and_attention_projections():
    m = nn.ModuleDict({
        "lin": nn.Linear(2, 2), "bil": nn.Bilinear(2, 2, 2),
        "c1": nn.Conv1d(1, 1, 1), "c2": nn.Conv2d(1, 1, 1), "c3": nn.Conv3d(1, 1, 1),
        "t1": nn.ConvTranspose1d(1, 1, 1), "t2": nn.ConvTranspose2d(1, 1, 1), "t3": nn.ConvTranspose3d(1, 1, 1),
        "lazy": nn.LazyLinear(2), "lazyc": nn.LazyConv2d(1, 1),
        "att": nn.MultiheadAttention(4, 2), "att_kv": nn.MultiheadAttention(4, 2, kdim=3, vdim=5),
        "bn": nn.BatchNorm1d(2), "bn3": nn.BatchNorm3d(2), "gn": nn.GroupNorm(1, 2), "inorm": nn.InstanceNorm2d(2, affine=True),
        "ln": nn.LayerNorm(2), "rms": nn.RMSNorm(2), "emb": nn.Embedding(2, 2), "bag": nn.EmbeddingBag(2, 2),
        "prelu": nn.PReLU(), "lstm": nn.LSTM(2, 2),
    })
    layers = ["lin", "bil", "c1", "c2", "c3", "t1", "t2", "t3", "lazy", "lazyc"]
    assert reglab.select(m, "@kernels") == (
        [f"{k}.weight" for k in layers]
        + ["att.in_proj_weight", "att.out_proj.weight",
           "att_kv.q_proj_weight", "att_kv.k_proj_weight", "att_kv.v_proj_weight", "att_kv.out_proj.weight"])
    assert reglab.select(m, "@biases") == (
        [f"{k}.bias" for k in layers]
        + ["att.in_proj_bias", "att.out_proj.bias", "att_kv.in_proj_bias", "att_kv.out_proj.bias"])


def test_spec_of_a_selector_attachment_round_trips_with_exact_names():
    m = net()
    reglab.regularize(m, params={"@kernels": L2(0.1)}, activity={"@ReLU": L1(0.2)})
    reglab.constrain(m, {"@biases": "non_neg"})
    spec = json.loads(json.dumps(reglab.regularization_spec(m)))
    assert spec["params"] == {"conv.weight": {"class_name": "L2", "config": {"l2": 0.1}},
                              "head.weight": {"class_name": "L2", "config": {"l2": 0.1}}}
    assert list(spec["activity"]) == ["relu"] and list(spec["constraints"]) == ["conv.bias", "head.bias"]
    fresh = net(seed=1)
    reglab.apply_spec(fresh, spec)
    assert reglab.regularization_spec(fresh) == spec


def test_a_name_starting_with_at_is_reached_by_escaping_it():
    def odd():
        m = nn.Sequential()
        m.add_module("@odd", nn.Linear(2, 2))
        m.add_module("plain", nn.Linear(2, 2))
        return m.double()

    m = odd()
    assert reglab.select(m, "[@]odd.*") == ["@odd.weight", "@odd.bias"]
    reglab.regularize(m, params={"[@]odd.weight": L2(1.0)}, activity={"[@]odd": L1(1.0)})
    spec = reglab.regularization_spec(m)
    assert list(spec["params"]) == ["@odd.weight"] and list(spec["activity"]) == ["@odd"]
    fresh = odd()
    reglab.apply_spec(fresh, spec)  # exact names: '@odd' is escaped, not read as a selector
    assert reglab.regularization_spec(fresh) == spec
