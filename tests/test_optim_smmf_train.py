"""SMMF actually trains: a small CNN on scikit-learn's digits (ships with the package, offline)
reaches Adam's test accuracy within 2 points after the same number of steps; and SMMF drops into
transformers' ``Trainer`` as a custom optimizer."""

from __future__ import annotations

import pytest
import torch

from smmf_plan.optim import SMMF

STEPS = 300


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    )


def _accuracy(make_opt, steps: int = STEPS) -> float:
    (xtr, ytr), (xte, yte) = _digits()
    model = _cnn()
    opt = make_opt(model.parameters())
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(ytr), (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return (model(xte).argmax(1) == yte).float().mean().item()


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny convolutions gain nothing from more, and the test stays fast
    on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_smmf_trains_digits_like_adam(one_thread):
    adam = _accuracy(lambda ps: torch.optim.Adam(ps, lr=1e-3))
    smmf = _accuracy(lambda ps: SMMF(ps, lr=1e-3))
    untrained = _accuracy(lambda ps: SMMF(ps, lr=1e-3), steps=0)
    assert adam > 0.9
    assert untrained < 0.5
    assert smmf >= adam - 0.02, (smmf, adam)


def test_trainer_accepts_smmf(tmp_path):
    import accelerate  # noqa: F401  (Trainer needs it; a declared test dependency, never skipped)
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=64)
    model = GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(16):
        ids = torch.randint(0, 64, (16,), generator=gen)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = SMMF(model.parameters(), lr=1e-2)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                             report_to=[], logging_steps=1, save_strategy="no", use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, optimizers=(opt, None))
    result = trainer.train()
    assert result.global_step == 4
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) == len(before)
    steps = {s["step"] for s in opt.state.values()}
    assert steps == {4}
    assert all("row_v" in s for s in opt.state.values())
