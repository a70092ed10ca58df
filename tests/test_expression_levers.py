"""Training levers against the FER+ class prior (issue 11): logit adjustment and mixup in train_expression."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from training.train_expression import (  # noqa: E402
    NC,
    adjusted_logits,
    batch_loss,
    class_log_prior,
    mixup,
    parse_args,
)


class FixedNet(torch.nn.Module):
    """Returns given logits and embeddings whatever the input (batch_loss only needs net(x) -> (logits, emb))."""

    def __init__(self, logits: torch.Tensor, emb: torch.Tensor):
        super().__init__()
        self.logits, self.emb = logits, emb

    def forward(self, x):
        return self.logits, self.emb


def test_class_log_prior_is_the_label_frequency_and_stays_finite():
    y = np.array([0, 0, 0, 1, 2, 2])  # classes 3..7 absent
    log_prior = class_log_prior(y)
    assert log_prior.shape == (NC,) and torch.isfinite(log_prior).all()
    counts = np.array([3, 1, 2] + [0.5] * 5)
    np.testing.assert_allclose(log_prior.exp().numpy(), counts / counts.sum(), rtol=1e-6)


@pytest.mark.parametrize("targets", ["soft", "majority"])
def test_logit_adjusted_loss_is_ce_on_logits_plus_tau_log_prior(targets):
    g = torch.Generator().manual_seed(0)
    b, tau = 16, 0.7
    logits, emb = torch.randn(b, NC, generator=g), torch.randn(b, 64, generator=g)
    y = torch.arange(b) % NC
    target = torch.softmax(torch.randn(b, NC, generator=g), 1) if targets == "soft" else F.one_hot(y, NC).float()
    log_prior = class_log_prior(np.array([0] * 50 + [1] * 30 + [2] * 10 + [3] * 5 + [4, 5, 6, 7]))
    cfg = parse_args(["--loss", "ce", "--logit-adjust", str(tau), "--targets", targets])
    _, ce, _ = batch_loss(FixedNet(logits, emb), torch.zeros(b, 1, 48, 48), y, target, cfg, log_prior)
    expected = -(target * F.log_softmax(logits + tau * log_prior, 1)).sum(1).mean()
    assert float(ce) == pytest.approx(float(expected), rel=1e-6)
    if targets == "majority":
        assert float(ce) == pytest.approx(float(F.cross_entropy(logits + tau * log_prior, y)), rel=1e-6)
    plain = parse_args(["--loss", "ce", "--targets", targets])
    _, ce0, _ = batch_loss(FixedNet(logits, emb), torch.zeros(b, 1, 48, 48), y, target, plain, log_prior)
    assert abs(float(ce0) - float(ce)) > 1e-3  # the adjustment is really applied (and only with the option)
    with pytest.raises(ValueError):
        adjusted_logits(logits, None, tau)


def test_logit_adjustment_leaves_balanced_raw_logits():
    """Fit one free logit vector to labels drawn at the prior's frequencies: plain CE learns log(prior), the
    adjusted CE (tau = 1) learns a constant, i.e. a uniform softmax: the raw scores carry no prior."""
    prior = torch.tensor([0.35, 0.27, 0.125, 0.125, 0.09, 0.007, 0.024, 0.006])
    prior = prior / prior.sum()
    log_prior = prior.log()
    target = prior.expand(4, NC)  # the expected CE over labels drawn from the prior
    for tau, expected in ((0.0, prior), (1.0, torch.full((NC,), 1 / NC))):
        z = fit_constant_logits(target, log_prior, tau)
        np.testing.assert_allclose(torch.softmax(z, 0).numpy(), expected.numpy(), atol=1e-4)


def fit_constant_logits(target: torch.Tensor, log_prior: torch.Tensor, tau: float) -> torch.Tensor:
    """The one logit vector z minimising the adjusted CE of ``target`` (LBFGS from zero)."""
    z = torch.zeros(NC, requires_grad=True)
    opt = torch.optim.LBFGS([z], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -(target * F.log_softmax(adjusted_logits(z.expand(len(target), NC), log_prior, tau), 1)).sum(1).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return z.detach()


def test_mixup_mixes_images_and_targets_with_one_lambda():
    g = torch.Generator().manual_seed(1)
    b = 32
    x = torch.rand(b, 1, 48, 48, generator=g)
    y = torch.randint(0, NC, (b,), generator=g)
    soft = torch.softmax(3 * torch.randn(b, NC, generator=g), 1)
    onehot = F.one_hot(y, NC).float()
    lams = []
    for seed in range(20):
        for target in (soft, onehot):
            xm, tm, lam, partner = mixup(x, target, 0.2, np.random.default_rng(seed))
            lams.append(lam)
            assert 0.5 <= lam <= 1.0
            assert sorted(partner.tolist()) == list(range(b))  # a permutation of the batch
            torch.testing.assert_close(xm, lam * x + (1 - lam) * x[partner])
            torch.testing.assert_close(tm, lam * target + (1 - lam) * target[partner])
            torch.testing.assert_close(tm.sum(1), torch.ones(b))
            assert (tm >= 0).all()
            moved = (partner != torch.arange(b)) & (x[partner] - x).abs().flatten(1).amax(1).gt(1e-3)
            # the image's own lambda, read back from its pixels, is the targets' lambda
            i = int(moved.nonzero()[0])
            lam_x = ((xm[i] - x[i]) / (x[i] - x[partner[i]])).flatten()
            lam_x = 1 + lam_x[(x[i] - x[partner[i]]).abs().flatten() > 0.05]
            assert float(lam_x.median()) == pytest.approx(lam, abs=1e-4)
            if target is onehot and lam > 0.5 + 1e-6:
                # the dominant label of every mixed face is its own majority label (what the triplets use)
                assert torch.equal(tm.argmax(1), y)
    assert len(set(np.round(lams, 6))) > 5 and max(lams) > 0.9  # Beta(0.2, 0.2): varies, mostly near 1
    xm, tm, lam, partner = mixup(x, soft, 0.0, np.random.default_rng(0))
    assert lam == 1.0 and xm is x and tm is soft


@pytest.mark.slow
def test_training_smoke_with_both_levers(tmp_path, face_cache):
    from training.train_expression import train

    args = ["--smoke", "--loss", "triplet", "--screening", "--logit-adjust", "1.0", "--mixup", "0.2",
            "--out", str(tmp_path / "run"), "--cache", str(face_cache)]
    out = train(parse_args(args))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["logit_adjust"] == 1.0 and metrics["mixup"] == 0.2
    assert sum(metrics["train_prior"]) == pytest.approx(1.0, abs=1e-4)
    epoch = metrics["history"][0]
    assert 0.5 <= epoch["mixup_lam"] <= 1.0 and np.isfinite(epoch["metric"])
    assert (out / "expression.onnx").is_file()


def test_transfer_readings_undo_the_training_shift():
    """ablation_transfer: a logit-adjusted run's FER+-prior reading, rebuilt from the tempered ONNX probabilities,
    ranks classes exactly as logits + tau log prior; its raw (natural) reading as the logits themselves; a plain
    run's readings are p and p / prior."""
    from training.ablation_transfer import readings

    rng = np.random.default_rng(0)
    prior = rng.dirichlet(np.ones(NC))
    logits = rng.normal(size=(500, NC)) * 2
    y = rng.integers(0, NC, 500)
    for tau, t in ((1.0, 0.6), (0.5, 1.7)):
        p = np.exp(logits / t)
        p /= p.sum(1, keepdims=True)
        r, t_fer = readings({"valid": p}, prior, tau, t, y)
        kinds = {kind: s for kind, s in r["valid"].values()}
        assert set(kinds) == {"nat", "FER+", "bal"} and t_fer > 0
        np.testing.assert_array_equal(kinds["FER+"].argmax(1), (logits + tau * np.log(prior)).argmax(1))
        np.testing.assert_array_equal(kinds["nat"].argmax(1), logits.argmax(1))
        np.testing.assert_allclose(kinds["bal"], kinds["FER+"] / prior)
    plain, t_fer = readings({"valid": p}, prior, 0.0, 1.0, y)
    assert t_fer is None and plain["valid"]["raw"] == ("FER+", p)
    np.testing.assert_allclose(plain["valid"]["raw ÷ π"][1], p / prior)
