"""towers.losses: the logQ-corrected in-batch softmax against hand-computed values, accidental-hit masking, and
the streaming candidate-frequency estimate."""

from __future__ import annotations

import math

import pytest
import torch

from towers.losses import CandidateFrequency, sampled_softmax_loss

# users u0 = [1, 0], u1 = [0, 1]; candidates p0 = [1, 0], p1 = [0, 1], p2 = [0.6, 0.8]; tau = 0.5
USERS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
CANDS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
TAU = torch.tensor(0.5)


def test_logq_corrected_softmax_hand_value() -> None:
    # u.p / tau: row0 [1, 0, 0.6]/0.5 = [2, 0, 1.2]; row1 [0, 1, 0.8]/0.5 = [0, 2, 1.6]
    # minus log_q [0.5, 0.0, -0.3]: row0 [1.5, 0, 1.5]; row1 [-0.5, 2, 1.9]
    # CE0 (target col 0) = -1.5 + log(e^1.5 + e^0 + e^1.5) = log(2 + e^-1.5) = log(2.2231302) = 0.7989162
    # CE1 (target col 1) = -2 + log(e^-0.5 + e^2 + e^1.9) = log(e^-2.5 + 1 + e^-0.1)
    #                    = log(0.0820850 + 1 + 0.9048374) = log(1.9869224) = 0.6865869
    # mean = 0.7427516
    loss = sampled_softmax_loss(
        USERS,
        CANDS,
        pos_index=torch.tensor([0, 1]),
        cand_ids=torch.tensor([10, 11, 12]),
        log_q=torch.tensor([0.5, 0.0, -0.3]),
        tau=TAU,
    )
    assert loss.item() == pytest.approx(0.7427516, abs=1e-5)


def test_without_log_q_is_plain_in_batch_softmax() -> None:
    # row0 [2, 0, 1.2], target 0: -2 + log(e^2 + 1 + e^1.2) = log(1 + e^-2 + e^-0.8) = 0.4603726
    # row1 [0, 2, 1.6], target 1: -2 + log(1 + e^2 + e^1.6) = log(e^-2 + 1 + e^-0.4) = 0.5909236
    # mean = 0.5256481
    kw = dict(pos_index=torch.tensor([0, 1]), cand_ids=torch.tensor([10, 11, 12]), tau=TAU)
    loss = sampled_softmax_loss(USERS, CANDS, log_q=None, **kw)
    assert loss.item() == pytest.approx(0.5256481, abs=1e-5)
    # a constant log_q shifts every logit of a row equally: the same loss
    same = sampled_softmax_loss(USERS, CANDS, log_q=torch.full((3,), -2.3), **kw)
    assert same.item() == pytest.approx(0.5256481, abs=1e-5)


def test_accidental_hit_is_masked() -> None:
    # one positive (u0, ad 10 in column 0); column 2 is ad 10 again: an accidental hit, masked.
    # logits [2, 0, (1.2 masked)] -> CE = -2 + log(e^2 + 1) = log(1 + e^-2) = 0.1269280
    # (unmasked it would be log(1 + e^-2 + e^-0.8) = 0.4603726)
    kw = dict(pos_index=torch.tensor([0]), cand_ids=torch.tensor([10, 11, 10]), log_q=None, tau=TAU)
    loss = sampled_softmax_loss(USERS[:1], CANDS, **kw)
    assert loss.item() == pytest.approx(0.1269280, abs=1e-5)
    # moving the duplicate column anywhere does not change the loss
    for other in ([1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.70710677, 0.70710677]):
        cands = CANDS.clone()
        cands[2] = torch.tensor(other)
        assert sampled_softmax_loss(USERS[:1], cands, **kw).item() == pytest.approx(0.1269280, abs=1e-6)
    # but it does once the column holds a different ad
    kw["cand_ids"] = torch.tensor([10, 11, 12])
    assert sampled_softmax_loss(USERS[:1], CANDS, **kw).item() == pytest.approx(0.4603726, abs=1e-5)


def test_two_positives_of_the_same_ad_mask_each_other_not_themselves() -> None:
    # u0 and u1 both clicked ad 10 (columns 0 and 2). Row0: own col 0, col 2 masked -> logits [2, 0]
    #   CE0 = log(1 + e^-2) = 0.1269280
    # Row1: logits [0, 2, 1.6], own col 2, col 0 masked -> [2, 1.6], target 1.6: CE1 = -1.6 + log(e^2 + e^1.6)
    #   = log(1 + e^0.4) = log(2.4918247) = 0.9130153
    # mean = 0.5199716
    loss = sampled_softmax_loss(
        USERS,
        CANDS,
        pos_index=torch.tensor([0, 2]),
        cand_ids=torch.tensor([10, 11, 10]),
        log_q=None,
        tau=TAU,
    )
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(0.5199716, abs=1e-5)


def test_gradient_flows_and_masked_column_gets_none() -> None:
    cands = CANDS.clone().requires_grad_(True)
    users = USERS[:1].clone().requires_grad_(True)
    loss = sampled_softmax_loss(
        users, cands, torch.tensor([0]), torch.tensor([10, 11, 10]), torch.tensor([0.1, 0.2, 0.3]), TAU
    )
    loss.backward()
    assert cands.grad is not None and users.grad is not None
    assert torch.all(cands.grad[2] == 0)
    assert cands.grad[1].abs().sum() > 0


def test_candidate_frequency_hand_values() -> None:
    cf = CandidateFrequency(buckets=4, decay=0.5)
    assert cf.counts.dtype == torch.float64
    cf.update(torch.tensor([0, 0, 1]))
    # counts = 0.5*0 + [2, 1, 0, 0]; batches = 0.5*0 + 1
    assert cf.counts.tolist() == [2.0, 1.0, 0.0, 0.0]
    assert cf.batches.item() == 1.0
    cf.update(torch.tensor([0, 2]))
    # counts = 0.5*[2, 1, 0, 0] + [1, 0, 1, 0] = [2, 0.5, 1, 0]; batches = 0.5*1 + 1 = 1.5
    assert cf.counts.tolist() == [2.0, 0.5, 1.0, 0.0]
    assert cf.batches.item() == 1.5
    # Q = counts / batches = [4/3, 1/3, 2/3, 0 -> clamped 1e-6]; bucket 0 fills > 1 column a batch: not capped
    lq = cf.log_q(torch.tensor([0, 1, 2, 3, 0]))
    assert lq.dtype == torch.float32
    expected = [0.2876821, -1.0986123, -0.4054651, -13.8155106, 0.2876821]
    assert lq.tolist() == pytest.approx(expected, abs=1e-5)
    cf.update(torch.tensor([3, 3, 3]))
    # counts = 0.5*[2, 0.5, 1, 0] + [0, 0, 0, 3] = [1, 0.25, 0.5, 3]; batches = 0.5*1.5 + 1 = 1.75
    assert cf.counts.tolist() == [1.0, 0.25, 0.5, 3.0]
    assert cf.batches.item() == 1.75
    # log(1/1.75), log(0.25/1.75), log(0.5/1.75), log(3/1.75)
    lq = cf.log_q(torch.tensor([0, 1, 2, 3]))
    assert lq.tolist() == pytest.approx([-0.5596158, -1.9459101, -1.2527630, 0.5389965], abs=1e-5)


def test_candidate_frequency_is_training_state() -> None:
    cf = CandidateFrequency(buckets=3, decay=0.9)
    cf.update(torch.tensor([1, 1, 2]))
    state = cf.state_dict()
    assert set(state) == {"counts", "batches"}
    resumed = CandidateFrequency(buckets=3, decay=0.9)
    resumed.load_state_dict(state)
    idx = torch.tensor([0, 1, 2])
    assert resumed.log_q(idx).tolist() == cf.log_q(idx).tolist()
    # never updated: Q = 0 / clamp(0) -> log(1e-6), finite
    assert CandidateFrequency(2, 0.5).log_q(torch.tensor([0, 1])).tolist() == pytest.approx(
        [-13.8155106] * 2, abs=1e-5
    )
