import json

import pytest
import torch
from torch import nn

import reglab
from reglab import L1, L2, KLSparsity


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)).to(dtype)


def hidden(m, x):
    """Output of m[1] (first ReLU) computed without calling the modules (calls would record)."""
    return torch.nn.functional.linear(x, m[0].weight, m[0].bias).relu()


def test_param_penalties_by_name_and_total():
    m = mlp()
    h = reglab.regularize(m, params={"*.weight": L2(0.1), "0.bias": L1(0.5)})
    terms = reglab.penalties(m)
    assert list(terms) == ["0.weight", "0.bias", "2.weight", "4.weight"]
    assert float(terms["2.weight"]) == pytest.approx(0.1 * float(m[2].weight.square().sum()))
    assert float(terms["0.bias"]) == pytest.approx(0.5 * float(m[0].bias.abs().sum()))
    assert float(reglab.penalty(m)) == pytest.approx(sum(float(v) for v in terms.values()))
    h.remove()
    assert reglab.penalties(m) == {}
    p = reglab.penalty(m)
    assert float(p) == 0.0 and p.dtype == torch.float64


def test_names_are_relative_to_the_module_asked():
    outer = nn.Sequential(nn.Linear(2, 2).double(), mlp())
    reglab.regularize(outer, params={"1.2.weight": L2()}, activity={"1.1": L1()})
    outer(torch.randn(3, 2, dtype=torch.float64))
    assert set(reglab.penalties(outer)) == {"1.2.weight", "1.1:activity"}
    inner = outer[1]
    inner(torch.randn(3, 2, dtype=torch.float64))
    assert set(reglab.penalties(inner)) == {"2.weight", "1:activity"}


def test_activity_is_divided_by_batch_size_and_before_vs_after():
    m = mlp()
    reglab.regularize(m, activity={"0": L1(0.01), "1": L1(0.01)})  # before and after the ReLU
    x = torch.randn(5, 2, dtype=torch.float64)
    pre = torch.nn.functional.linear(x, m[0].weight, m[0].bias)
    m(x)
    t = reglab.penalties(m)
    assert float(t["0:activity"]) == pytest.approx(0.01 * float(pre.abs().sum()) / 5)
    assert float(t["1:activity"]) == pytest.approx(0.01 * float(pre.relu().sum()) / 5)


def test_each_top_level_call_starts_afresh_and_accumulation_is_opt_in():
    m = mlp()
    reglab.regularize(m, activity={"1": L2(1.0)})
    x1, x2 = torch.randn(4, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    a1 = L2(1.0)(hidden(m, x1)) / 4
    a2 = L2(1.0)(hidden(m, x2)) / 6
    m(x1)
    m(x2)  # Keras 3: a top-level call replaces what the previous one left unread
    assert float(reglab.penalty(m)) == pytest.approx(float(a2))
    assert float(reglab.penalty(m)) == pytest.approx(float(a2))  # reading again changes nothing
    with reglab.accumulate_activity():  # gradient accumulation: both count (since the last read)
        m(x1)
        m(x2)
    assert float(reglab.penalty(m)) == pytest.approx(float(a1 + a2))
    m(x1)
    assert float(reglab.penalty(m)) == pytest.approx(float(a1))
    wrapper = nn.Sequential(m)  # a wrapper's call encloses the model's: one top-level call
    wrapper(x2)
    assert float(reglab.penalty(m)) == pytest.approx(float(a2))


def test_a_validation_pass_with_grad_does_not_double_the_next_penalty():
    """The issue's case: an evaluation with grad enabled between steps used to add to the next
    batch's penalty (0.0775 vs 0.0383)."""
    m = mlp()
    reglab.regularize(m, activity={"1": L1(1.0)})
    x, xv = torch.randn(4, 2, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    m(xv)
    m(x)
    assert float(reglab.penalty(m)) == pytest.approx(float(L1(1.0)(hidden(m, x)) / 4))


def test_unread_forward_passes_keep_no_graphs_alive():
    """10,000 unread forward passes with grad: memory stays flat (each call replaces the last
    call's term and with it the graph it held)."""
    import gc
    import weakref

    m = mlp()
    reglab.regularize(m, activity={"1": L1(0.01)})
    x = torch.randn(64, 2, dtype=torch.float64)
    m(x)
    first = weakref.ref(reglab.penalties(m)["1:activity"])
    for _ in range(10_000):
        m(x)
    gc.collect()
    assert first() is None  # the first pass's term (and its graph) is gone
    state = m[1].__dict__["_reglab_activity"]
    assert state.count == 1 and float(state.total) == pytest.approx(float(L1(0.01)(hidden(m, x)) / 64))


def test_no_grad_evaluation_between_steps_neither_leaks_nor_drops():
    m = mlp()
    reglab.regularize(m, activity={"1": L1(1.0)})
    x, xv = torch.randn(4, 2, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    expected_train = L1(1.0)(hidden(m, x)) / 4
    expected_val = L1(1.0)(hidden(m, xv)) / 9
    m.eval()
    with torch.no_grad():
        m(xv)  # eval() mode still computes the activity penalty (Keras's val_loss includes it)
    m.train()
    m(x)  # a different grad mode: the evaluation term is dropped, not added
    p = reglab.penalty(m)
    assert p.requires_grad
    assert float(p) == pytest.approx(float(expected_train))
    m.eval()
    with torch.no_grad():
        m(xv)
        assert float(reglab.penalty(m)) == pytest.approx(float(expected_val))
    reglab.clear_activity(m)
    assert reglab.penalties(m) == {}


def test_tied_parameter_is_penalized_once():
    a = nn.Linear(3, 3, bias=False).double()
    b = nn.Linear(3, 3, bias=False).double()
    b.weight = a.weight
    m = nn.Sequential(a, b)
    reglab.regularize(m, params={"*weight": L2(1.0)})
    terms = reglab.penalties(m)
    assert list(terms) == ["0.weight"]
    assert float(reglab.penalty(m)) == pytest.approx(float(a.weight.square().sum()))


def test_recurrent_activity_sees_batch_first_output():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, batch_first=False).double()
    reglab.regularize(lstm, activity={"": KLSparsity(0.1, 1.0)})
    x = torch.randn(7, 4, 3, dtype=torch.float64)  # (seq, batch, feat)
    out, _ = lstm(x)
    q = out.transpose(0, 1)  # batch-first view
    expected = KLSparsity(0.1, 1.0)(q) / 4  # divided by the batch size, 4
    assert float(reglab.penalty(lstm)) == pytest.approx(float(expected))


def test_conv_and_user_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.head = nn.Linear(2 * 4 * 4, 1)

        def forward(self, x):
            return self.head(self.conv(x).flatten(1))

    net = Net().double()
    reglab.regularize(net, params={"conv.weight": L2(0.2)}, activity={"conv": L1(0.1)})
    net(torch.randn(3, 1, 6, 6, dtype=torch.float64))
    terms = reglab.penalties(net)
    assert set(terms) == {"conv.weight", "conv:activity"}
    assert float(terms["conv.weight"]) == pytest.approx(0.2 * float(net.conv.weight.square().sum()))


def test_penalty_gradients_flow_to_parameters_gradcheck():
    m = mlp()
    reglab.regularize(m, params={"0.weight": L1(0.1) + L2(0.2), "2.*": L2(0.3)}, activity={"1": L1(0.05), "3": KLSparsity(0.2, 0.5)})
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(6, 2, dtype=torch.float64)

    def fn(*params):
        out = torch.func.functional_call(m, dict(zip(names, params)), (x,))
        return reglab.penalty(m) + 0 * out.sum()

    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    assert torch.autograd.gradcheck(fn, params)


def test_pattern_errors_name_the_problem():
    m = mlp()
    with pytest.raises(ValueError, match=r"parameter pattern '\*.kernel' matches no parameter name; the names are: '0.weight'"):
        reglab.regularize(m, params={"*.kernel": L2()})
    with pytest.raises(ValueError, match=r"parameter '0.weight' is matched by two patterns, '\*.weight' and '0.\*'"):
        reglab.regularize(m, params={"*.weight": L2(), "0.*": L1()})
    with pytest.raises(ValueError, match=r"module pattern 'encoder' matches no module name"):
        reglab.regularize(m, activity={"encoder": L1()})
    with pytest.raises(ValueError, match=r"params\['\*.weight'\]: unknown regularizer 'l3'"):
        reglab.regularize(m, params={"*.weight": "l3"})
    reglab.regularize(m, params={"0.weight": L2()})
    with pytest.raises(ValueError, match=r"parameter '0.weight' already has a regularizer"):
        reglab.regularize(m, params={"0.*": L2()})
    assert list(reglab.penalties(m)) == ["0.weight"]  # the failed call attached nothing
    with pytest.raises(ValueError, match=r"model must be a torch.nn.Module; got list"):
        reglab.regularize([1, 2], params={})


def test_spec_round_trip_restores_everything():
    m = mlp()
    reglab.regularize(m, params={"*.weight": L2(0.1) + L1(0.2), "4.bias": "l1"}, activity={"1": KLSparsity(0.1, 0.3)})
    reglab.constrain(m, {"0.weight": reglab.MaxNorm(1.5), "2.bias": "non_neg"})
    spec = json.loads(json.dumps(reglab.regularization_spec(m)))
    fresh = mlp(seed=1)
    fresh.load_state_dict(m.state_dict())
    reglab.apply_spec(fresh, spec)
    assert reglab.regularization_spec(fresh) == spec
    x = torch.randn(4, 2, dtype=torch.float64)
    m(x)
    fresh(x)
    a, b = reglab.penalties(m), reglab.penalties(fresh)
    assert a.keys() == b.keys()
    for k in a:
        assert float(a[k]) == pytest.approx(float(b[k]))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_regs = st.one_of(
    st.builds(L1, st.floats(0, 1)), st.builds(L2, st.floats(0, 1)), st.builds(reglab.L1L2, st.floats(0, 1), st.floats(0, 1)),
    st.builds(reglab.Lp, st.floats(0.5, 4), st.floats(0, 1)), st.builds(KLSparsity, st.floats(0.01, 0.99), st.floats(0, 1)),
)
_params = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


@settings(max_examples=30, deadline=None)
@given(preg=st.dictionaries(st.sampled_from(_params), _regs, max_size=6),
       areg=st.dictionaries(st.sampled_from(["0", "1", "3"]), _regs, max_size=3),
       cons=st.dictionaries(st.sampled_from(_params), st.sampled_from([reglab.MaxNorm(1.5), reglab.NonNeg(),
                                                                        reglab.UnitNorm(), reglab.MinMaxNorm(0.1, 2.0)]),
                            max_size=3))
def test_spec_round_trip_is_identity_property(preg, areg, cons):
    m = mlp()
    reglab.regularize(m, params=preg, activity=areg)
    if cons:
        reglab.constrain(m, cons)
    spec = json.loads(json.dumps(reglab.regularization_spec(m)))
    fresh = mlp(seed=3)
    reglab.apply_spec(fresh, spec)
    assert reglab.regularization_spec(fresh) == spec
    assert set(spec["params"]) == set(preg) and set(spec["constraints"]) == set(cons)


def test_deepcopy_after_a_forward_with_grad_copies_no_recorded_term():
    import copy

    m = mlp()
    reglab.regularize(m, activity={"1": L1(0.01)})
    x = torch.randn(5, 2, dtype=torch.float64)
    m(x)
    c = copy.deepcopy(m)  # raised "Only Tensors created explicitly by the user ... support the deepcopy protocol"
    assert reglab.penalties(c) == {} and float(reglab.penalty(m)) > 0
    c(x)
    assert float(reglab.penalty(c)) == pytest.approx(float(reglab.penalty(m)))
