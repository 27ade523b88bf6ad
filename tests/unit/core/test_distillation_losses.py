"""Auto-distillation: the right teacher, no gradient into it, no term where there is none."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flextrain.core.losses import anchor_depths, centralised_loss, client_loss, distillation_term
from flextrain.core.models import FlexResNet, build_model


def _model() -> FlexResNet:
    torch.manual_seed(0)
    return build_model("resnet", 20, 5, 1)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 5, (6,), generator=g)


def test_logit_distillation_is_the_batch_mean_of_squared_l2_norms() -> None:
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    # ||(1,2)||^2 = 5, ||(-3,0)||^2 = 9, mean = 7
    assert distillation_term(student, teacher, "logits").item() == pytest.approx(7.0)


def test_probability_distillation_compares_softmax_outputs() -> None:
    student = torch.tensor([[0.0, 0.0]])  # softmax (0.5, 0.5)
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax (0.75, 0.25)
    # (0.5 - 0.75)^2 + (0.5 - 0.25)^2 = 0.125
    assert distillation_term(student, teacher, "probs").item() == pytest.approx(0.125)
    assert distillation_term(student, teacher).item() == pytest.approx(0.125)  # default


def test_unknown_distillation_target_is_rejected() -> None:
    with pytest.raises(ValueError, match="target"):
        distillation_term(torch.zeros(1, 2), torch.zeros(1, 2), "features")


@pytest.mark.parametrize("target", ["probs", "logits"])
def test_distillation_carries_no_gradient_into_the_teacher(target: str) -> None:
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    torch.autograd.backward(distillation_term(student, teacher, target))
    assert teacher.grad is None
    assert student.grad is not None
    if target == "logits":
        torch.testing.assert_close(student.grad, 2 * (student - teacher).detach() / 3)


def test_centralised_distillation_is_zero_at_full_depth() -> None:
    model = _model()
    x, y = _batch()
    parts = centralised_loss(model, x, y, model.num_blocks, beta=0.2)
    assert parts.distill.item() == 0.0
    torch.testing.assert_close(parts.total, F.cross_entropy(model(x), y))


def test_centralised_teacher_is_one_block_deeper_and_gets_no_gradient() -> None:
    model = _model()
    x, y = _batch()
    k = 4
    parts = centralised_loss(model, x, y, k, beta=0.5)
    torch.autograd.backward(parts.total)
    for name, p in model.named_parameters():
        if name.startswith(f"blocks.{k}."):
            assert p.grad is None, name  # the teacher's extra block
    assert parts.distill.item() > 0


def _f(z: torch.Tensor, target: str) -> torch.Tensor:
    return F.softmax(z, dim=1) if target == "probs" else z


@pytest.mark.parametrize("target", ["probs", "logits"])
def test_centralised_loss_is_ce_plus_beta_times_distance_to_the_deeper_prefix(
    target: str,
) -> None:
    model = _model().eval()  # eval mode: BatchNorm is deterministic across passes
    x, y = _batch()
    parts = centralised_loss(model, x, y, 3, beta=0.2, target=target)
    z3, z4 = model(x, 3), model(x, 4)
    expected = F.cross_entropy(z3, y) + 0.2 * (_f(z3, target) - _f(z4, target)).pow(2).sum(1).mean()
    torch.testing.assert_close(parts.total, expected)


@pytest.mark.parametrize("target", ["probs", "logits"])
def test_client_loss_makes_the_devices_depth_teach_the_shorter_prefix(target: str) -> None:
    model = _model().eval()
    x, y = _batch()
    parts = client_loss(model, x, y, 5, beta=0.2, distill=True, target=target)
    z5, z4 = model(x, 5), model(x, 4)
    expected = F.cross_entropy(z5, y) + 0.2 * (_f(z4, target) - _f(z5, target)).pow(2).sum(1).mean()
    torch.testing.assert_close(parts.total, expected)
    torch.testing.assert_close(parts.logits, z5)


def test_client_teacher_logits_get_gradient_only_from_cross_entropy() -> None:
    model = _model()
    x, y = _batch()
    # Head gradient with and without distillation differs, but block 4 (only on the
    # teacher path, depth 5 = blocks 0..4) must get exactly the CE gradient.
    torch.autograd.backward(
        client_loss(model, x, y, 5, beta=1.0, distill=True, target="logits").total
    )
    grad = model.block_list[4].conv2.weight.grad
    assert grad is not None
    with_distill = grad.clone()
    model.zero_grad(set_to_none=True)
    torch.autograd.backward(client_loss(model, x, y, 5, beta=1.0, distill=False).total)
    torch.testing.assert_close(with_distill, model.block_list[4].conv2.weight.grad)


@pytest.mark.parametrize(
    ("depth", "beta", "distill"), [(5, 0.2, False), (5, 0.0, True), (1, 0.2, True)]
)
def test_client_loss_is_plain_cross_entropy_when_distillation_is_off(
    depth: int, beta: float, distill: bool
) -> None:
    model = _model().eval()
    x, y = _batch()
    parts = client_loss(model, x, y, depth, beta=beta, distill=distill)
    assert parts.distill.item() == 0.0
    torch.testing.assert_close(parts.total, F.cross_entropy(model(x, depth), y))


def test_negative_beta_is_rejected() -> None:
    model = _model()
    x, y = _batch()
    with pytest.raises(ValueError, match="beta"):
        centralised_loss(model, x, y, 2, beta=-0.1)
    with pytest.raises(ValueError, match="beta"):
        client_loss(model, x, y, 2, beta=-0.1)


# -- the anchor research option (every deeper device also trains the weakest prefix) -------


@pytest.mark.parametrize("target", ["probs", "logits"])
def test_anchor_distill_adds_the_weakest_prefix_as_a_second_student(target: str) -> None:
    model = _model().eval()
    x, y = _batch()
    parts = client_loss(
        model, x, y, 6, beta=0.2, target=target, anchor_depths=(2,), anchor_loss="distill"
    )
    z6, z5, z2 = model(x, 6), model(x, 5), model(x, 2)
    expected = (
        F.cross_entropy(z6, y)
        + 0.2 * (_f(z5, target) - _f(z6, target)).pow(2).sum(1).mean()
        + 0.2 * (_f(z2, target) - _f(z6, target)).pow(2).sum(1).mean()
    )
    torch.testing.assert_close(parts.total, expected)
    torch.testing.assert_close(parts.logits, z6)


def test_anchor_ce_adds_cross_entropy_at_the_weakest_prefix() -> None:
    model = _model().eval()
    x, y = _batch()
    parts = client_loss(model, x, y, 6, beta=0.2, anchor_depths=(2,), anchor_loss="ce")
    z6, z5, z2 = model(x, 6), model(x, 5), model(x, 2)
    expected = (
        F.cross_entropy(z6, y)
        + 0.2 * (_f(z5, "probs") - _f(z6, "probs")).pow(2).sum(1).mean()
        + 0.2 * (_f(z2, "probs") - _f(z6, "probs")).pow(2).sum(1).mean()
        + F.cross_entropy(z2, y)
    )
    torch.testing.assert_close(parts.total, expected)


def test_an_anchor_one_block_shorter_is_distilled_once() -> None:
    model = _model().eval()
    x, y = _batch()
    paper = client_loss(model, x, y, 3, beta=0.2)
    anchored = client_loss(model, x, y, 3, beta=0.2, anchor_depths=(2,), anchor_loss="distill")
    torch.testing.assert_close(anchored.total, paper.total)
    with_ce = client_loss(model, x, y, 3, beta=0.2, anchor_depths=(2,), anchor_loss="ce")
    torch.testing.assert_close(with_ce.total, paper.total + F.cross_entropy(model(x, 2), y))


@pytest.mark.parametrize("anchor_loss", ["distill", "ce"])
def test_the_weakest_tier_itself_adds_nothing(anchor_loss: str) -> None:
    model = _model().eval()
    x, y = _batch()
    parts = client_loss(
        model, x, y, 2, beta=0.2, distill=False, anchor_depths=(2,), anchor_loss=anchor_loss
    )
    torch.testing.assert_close(parts.total, F.cross_entropy(model(x, 2), y))


def test_the_anchor_off_is_the_papers_loss_bit_for_bit() -> None:
    model = _model()
    x, y = _batch()
    a = client_loss(model, x, y, 5, beta=0.2).total
    b = client_loss(model, x, y, 5, beta=0.2, anchor_depths=(2,), anchor_loss="none").total
    assert torch.equal(a, b)


def test_an_unknown_anchor_loss_is_rejected() -> None:
    model = _model()
    x, y = _batch()
    with pytest.raises(ValueError, match="anchor_loss"):
        client_loss(model, x, y, 5, anchor_depths=(2,), anchor_loss="features")


def test_several_anchors_add_the_mean_of_their_terms() -> None:
    model = _model().eval()
    x, y = _batch()
    parts = client_loss(model, x, y, 6, beta=0.2, anchor_depths=(2, 4, 5, 6, 8), anchor_loss="ce")
    z = {d: model(x, d) for d in (2, 4, 5, 6)}
    p = {d: F.softmax(v, dim=1) for d, v in z.items()}
    paper = F.cross_entropy(z[6], y) + 0.2 * (p[5] - p[6]).pow(2).sum(1).mean()
    # anchors 2, 4, 5 (6 and 8 are not below the device's depth); 5 = k - 1 is not
    # distilled twice
    terms = [
        0.2 * (p[2] - p[6]).pow(2).sum(1).mean() + F.cross_entropy(z[2], y),
        0.2 * (p[4] - p[6]).pow(2).sum(1).mean() + F.cross_entropy(z[4], y),
        F.cross_entropy(z[5], y),
    ]
    torch.testing.assert_close(parts.total, paper + sum(terms) / 3)


def test_anchor_depths_are_the_tier_depths_below_the_devices_own() -> None:
    tiers = [9, 3, 5, 3, 7]
    assert anchor_depths(tiers, 7, "all") == (3, 5)
    assert anchor_depths(tiers, 7, "weakest") == (3,)
    assert anchor_depths(tiers, 3, "all") == ()  # the weakest tier has none
    with pytest.raises(ValueError, match="anchor tiers"):
        anchor_depths(tiers, 7, "deepest")
