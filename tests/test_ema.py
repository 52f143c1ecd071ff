"""The moving average of the weights (train.ema_decay): its warm-up, its arithmetic, and where it
goes: validation, best.pt and every checkpoint's ``model`` (so translation, ``nmt average`` and
``--init-from``), with the training weights beside it for --resume. Exact resume after SIGKILLs
with an average is in test_resume.py."""

from __future__ import annotations

import json

import pytest
import torch

from _train_fixtures import new_run, prepared, train_here, weights  # noqa: F401
from nmt_cli.training.ema import Ema, decay_at


def test_the_decay_warms_up_with_the_step():
    assert decay_at(1, 0.999) == pytest.approx(2 / 11)
    assert decay_at(8, 0.999) == pytest.approx(0.5)
    assert decay_at(80, 0.999) == pytest.approx(0.9)
    assert decay_at(10**6, 0.999) == 0.999
    assert decay_at(3, 0.2) == 0.2  # never above the setting


def test_the_average_follows_the_formula_and_leaves_integer_buffers_alone():
    model = torch.nn.BatchNorm1d(3)  # weights, float buffers and an integer counter
    ema = Ema(model, 0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone().float() for k, v in start.items() if v.is_floating_point()}
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(1.0)
            model.running_mean.add_(2.0)
        model.num_batches_tracked += 1
        d = decay_at(step, 0.9)
        for k, v in model.state_dict().items():
            if k in expected:
                expected[k] = d * expected[k] + (1 - d) * v.float()
        ema.update(model, step)
    got = ema.weights(model)
    for k, v in expected.items():
        assert torch.allclose(got[k], v, atol=1e-6), k
    assert got["num_batches_tracked"] == 3  # taken from the model
    with ema.applied(model):
        assert torch.allclose(model.weight, expected["weight"])
    assert torch.equal(model.weight, start["weight"] + 3)  # its own weights again


@pytest.fixture(scope="module")
def averaged_run(prepared):  # noqa: F811
    recipe, workdir = new_run(prepared, "ema", max_steps=20, valid_every=10, ema_decay=0.9,
                              keep_last=2, average_last=2, save_every=10)
    train_here(recipe)
    return workdir


def test_checkpoints_hold_the_average_as_the_model_and_validation_scores_it(averaged_run):
    from nmt_cli.recipes import load_recipe
    from nmt_cli.training.trainer import Trainer

    ckpts = averaged_run / "checkpoints"
    avg, trained = weights(ckpts / "last.pt"), weights(ckpts / "last.pt", "train_model")
    assert avg.keys() == trained.keys()
    assert not all(torch.equal(avg[k], trained[k]) for k in avg)
    assert "train_model" in torch.load(ckpts / "best.pt", weights_only=True)
    # the dev loss logged at step 20 is that of the average, not of the training weights
    records = [json.loads(line) for line in (averaged_run / "metrics.jsonl").read_text()
               .splitlines()]
    logged = [r for r in records if r.get("event") == "valid" and r["step"] == 20][-1]
    trainer = Trainer(load_recipe(averaged_run.parent / "ema.yaml"), resume=True)
    assert trainer.ema is not None
    assert all(torch.equal(trainer.ema.weights(trainer.model)[k], avg[k]) for k in avg)
    assert trainer.validate()["dev_loss"] == pytest.approx(logged["dev_loss"], abs=1e-6)
    assert trainer.validate(average=False)["dev_loss"] != pytest.approx(logged["dev_loss"],
                                                                        abs=1e-6)


def test_nmt_average_and_init_from_take_the_average(averaged_run, prepared):  # noqa: F811
    ckpts = averaged_run / "checkpoints"
    payload = torch.load(ckpts / "averaged.pt", weights_only=True)
    assert "train_model" not in payload  # nothing to resume from
    steps = sorted(ckpts.glob("ckpt-*.pt"))[-2:]
    mean = {k: (weights(steps[0])[k].double() + weights(steps[1])[k].double()) / 2
            for k in payload["model"] if payload["model"][k].is_floating_point()}
    assert all(torch.allclose(payload["model"][k].double(), v, atol=1e-6) for k, v in mean.items())

    from nmt_cli.recipes import load_recipe
    from nmt_cli.training.runs import prepare_run
    from nmt_cli.training.trainer import Trainer

    recipe, _ = new_run(prepared, "from-ema", max_steps=1)
    rcp = load_recipe(recipe)
    prepare_run(rcp, init_from=ckpts / "last.pt")
    trainer = Trainer(rcp, init_from=ckpts / "last.pt")
    avg = weights(ckpts / "last.pt")
    assert all(torch.equal(v.cpu(), avg[k]) for k, v in trainer.model.state_dict().items())
