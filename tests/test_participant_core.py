"""The participant core without a network: data by role, training, knowledge, staging,
selective distillation, evaluation, adapters, resume and cancellation (tiny models)."""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from participant_helpers import make_config, write_task

from fedmkt.errors import FailedPrecondition, InvalidArgument, NotFound
from fedmkt.knowledge.topk import iter_knowledge
from fedmkt.models import adapters
from fedmkt.participant.core import Participant
from fedmkt.participant.training import Cancelled
from fedmkt.wire.chunking import KnowledgeSample, chunk_knowledge
from fedmkt.wire.errors import WireError
from fedmkt.wire.v1 import knowledge_pb2


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def client(task, tmp_path_factory) -> Participant:
    root = tmp_path_factory.mktemp("client")
    return Participant(make_config(task, root, name="client-0", role="client",
                                   model="tiny-gpt2"))


@pytest.fixture(scope="module")
def server(task, tmp_path_factory) -> Participant:
    root = tmp_path_factory.mktemp("server")
    return Participant(make_config(task, root, name="server", role="server",
                                   model="tiny-smollm2"))


def _lora(participant: Participant) -> dict[str, torch.Tensor]:
    return adapters.adapter_state_dict(participant.model)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def own_knowledge(p: Participant, run: str, round_index: int, top_k: int = 0
                  ) -> list[KnowledgeSample]:
    """Knowledge at every position (what a sender whose receivers read all positions sends;
    the default sends only the answer rows): long samples that chunking splits into parts."""
    p.compute_knowledge(run, round_index, top_k)  # checks the arguments, switches the run
    return list(iter_knowledge(p.model, p.public.encoded, k=top_k or p.config.top_k,
                               batch_size=8, progress=False))


def stream(samples: list[KnowledgeSample], *, run: str, round_index: int, source: str,
           fingerprint: str, max_bytes: int = 1 << 20) -> list[knowledge_pb2.KnowledgeChunk]:
    header = knowledge_pb2.KnowledgeHeader(run_id=run, round=round_index, source=source,
                                           tokenizer_fingerprint=fingerprint,
                                           top_k=samples[0].top_k)
    return list(chunk_knowledge(samples, header, logit_dtype="float16", max_bytes=max_bytes))


def with_losses(samples: list[KnowledgeSample], losses) -> list[KnowledgeSample]:
    return [dataclasses.replace(s, loss=float(loss)) for s, loss in zip(samples, losses,
                                                                          strict=True)]


# --------------------------------------------------------------------------- data by role


def test_roles_hold_the_same_public_data_and_only_clients_private(client, server) -> None:
    assert [e.sample_id for e in client.public] == [e.sample_id for e in server.public]
    assert len(client.public) == 12 and len(client.private) == 12
    assert len(server.private) == 0 and server.describe().private_samples == 0
    public = set(client.public.ids())
    assert public.isdisjoint(client.private.ids())
    assert public.isdisjoint(client.eval_split.ids())
    with pytest.raises(FailedPrecondition, match="no private data"):
        server.train_local("run-x", 0)


def test_describe_reports_counts_and_tokenizer(client) -> None:
    d = client.describe()
    assert d.role == "client" and d.model == "tiny-gpt2"
    assert d.tokenizer.name == "gpt2" and d.tokenizer.vocab_size == 50257
    assert len(d.tokenizer.fingerprint) == 64
    assert 0 < d.trainable_parameters < d.total_parameters
    assert (d.public_samples, d.private_samples) == (12, 12)


def test_public_tokens_are_the_public_encodings(client) -> None:
    tokens = dict(client.public_tokens())
    assert list(tokens) == client.public.ids()
    first = client.public.encoded[0]
    assert tokens[first.sample_id].tolist() == first.input_ids


# --------------------------------------------------------------------------- training


def test_local_training_lowers_the_loss_and_saves_the_round(client) -> None:
    steps = []
    metrics = client.train_local("run-train", 0, epochs=4,
                                 progress=lambda *args: steps.append(args[3]["loss"]))
    assert metrics["steps"] == len(steps) == 12  # 12 samples / batch 4, 4 epochs
    first_epoch, last_epoch = np.mean(steps[:3]), np.mean(steps[-3:])
    assert last_epoch < first_epoch - 0.05
    assert client.describe().latest_adapter_round == 0
    blob = client.fetch_adapter(0)
    assert blob.round == 0 and len(blob.digest) == 64
    assert adapters.state_dict_from_bytes(blob.data).keys() == _lora(client).keys()


def test_rerunning_a_step_gives_the_same_adapter(client) -> None:
    client.train_local("run-rerun", 0)
    first = client.fetch_adapter(0).digest
    client.train_local("run-rerun", 1)
    client.train_local("run-rerun", 0)  # retried: starts from the LoRA init again
    assert client.fetch_adapter(0).digest == first


def test_two_participants_with_one_seed_give_identical_adapters(client, task, tmp_path) -> None:
    client.train_local("run-repro", 0)
    twin = Participant(make_config(task, tmp_path / "twin", name="client-0", role="client",
                                   model="tiny-gpt2"))
    twin.train_local("run-repro", 0)
    assert twin.fetch_adapter(0).data == client.fetch_adapter(0).data

    # ...and a restarted participant resumes from the latest complete adapter.
    restarted = Participant(make_config(task, tmp_path / "twin", name="client-0",
                                        role="client", model="tiny-gpt2"))
    assert restarted.run_id == "run-repro"
    assert restarted.describe().latest_adapter_round == 0
    assert _same(_lora(restarted), _lora(twin))


def test_cancelled_training_restores_the_adapter_and_saves_nothing(client) -> None:
    client.train_local("run-cancel", 0)
    before = _lora(client)
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        client.train_local("run-cancel", 1, epochs=3, cancel=cancel,
                           progress=lambda *args: cancel.set())
    assert _same(_lora(client), before)
    assert client.describe().latest_adapter_round == 0
    client.train_local("run-cancel", 1)  # still usable
    assert client.describe().latest_adapter_round == 1


# --------------------------------------------------------------------------- knowledge


def test_knowledge_covers_every_answer_position_with_top_k(client) -> None:
    out = client.compute_knowledge("run-k", 0, top_k=5)
    assert out.header.top_k == 5 and out.header.source == "client-0"
    samples = {s.sample_id: s for s in out.samples}
    assert sorted(samples) == sorted(client.public.ids())
    assert client.config.kd_positions == "answer"  # the default: rows that predict the answer
    for enc in client.public.encoded:
        sample = samples[enc.sample_id]
        assert sample.position_start == enc.answer_start - 1
        assert sample.topk_ids.shape == (len(enc.input_ids) - enc.answer_start, 5)
        assert sample.token_ids.tolist() == enc.input_ids
        assert sample.loss > 0 and math.isfinite(sample.loss)
    work = client.last_knowledge_work
    assert work.done.head_positions == work.floor.head_positions == sum(
        len(enc.input_ids) - enc.answer_start for enc in client.public.encoded)
    with pytest.raises(InvalidArgument, match="top_k"):
        client.compute_knowledge("run-k", 0, top_k=5000)


def _fingerprint(p: Participant) -> str:
    return p.tokenizer_info.fingerprint


def test_received_knowledge_is_staged_with_its_digest(server) -> None:
    samples = own_knowledge(server, "run-stage", 0, top_k=32)
    chunks = stream(samples, run="run-stage", round_index=0, source="client-7",
                    fingerprint=_fingerprint(server), max_bytes=1024)
    assert any(part.part_index > 0 for chunk in chunks for part in chunk.samples)
    info = server.receive_knowledge("run-stage", 0, chunks)
    assert info.samples == len(samples) and info.source == "client-7"
    assert server.staged_sources("run-stage", 0) == ["client-7"]
    again = server.receive_knowledge("run-stage", 0, iter(chunks))  # idempotent re-send
    assert again.digest == info.digest
    with server._open(server._folders("run-stage"), 0, "client-7") as staged:
        assert staged.digest == info.digest
        got = staged.get(samples[3].sample_id)
        assert np.array_equal(got.topk_ids, samples[3].topk_ids)
        expected = samples[3].topk_logits.astype(np.float16).astype(np.float32)
        assert np.array_equal(got.topk_logits, expected)
        # A re-send with other content replaces the file; an open reader keeps its own.
        resent = with_losses(samples, [1.5] * len(samples))
        newer = server.receive_knowledge("run-stage", 0, stream(
            resent, run="run-stage", round_index=0, source="client-7",
            fingerprint=_fingerprint(server)))
        assert newer.digest != info.digest
        assert staged.loss(samples[3].sample_id) == pytest.approx(samples[3].loss)
        assert np.array_equal(staged.get(samples[3].sample_id).topk_ids, samples[3].topk_ids)
    with server._open(server._folders("run-stage"), 0, "client-7") as staged:
        assert staged.digest == newer.digest and staged.loss(samples[3].sample_id) == 1.5


def _mutate(samples: list[KnowledgeSample], index: int, **changes) -> list[KnowledgeSample]:
    out = [dataclasses.replace(s, topk_ids=s.topk_ids.copy(), topk_logits=s.topk_logits.copy())
           for s in samples]
    out[index] = dataclasses.replace(out[index], **changes)
    return out


def test_malformed_streams_are_rejected_and_nothing_changes(client, server) -> None:
    run = "run-bad"
    good = own_knowledge(server, run, 0)
    fp = _fingerprint(server)
    committed = server.receive_knowledge(run, 0, stream(good, run=run, round_index=0,
                                                        source="client-0", fingerprint=fp))
    long = own_knowledge(server, run, 0, top_k=32)  # split into parts at 1 KiB per chunk
    vocab = server.vocab_size
    ids_high = good[1].topk_ids.copy()
    ids_high[0, 0] = vocab
    nan_logits = good[1].topk_logits.copy()
    nan_logits[2, 1] = np.nan
    bad_tokens = good[1].token_ids.copy()
    bad_tokens[-1] = (bad_tokens[-1] + 1) % vocab
    cases = {
        "wrong run": (stream(good, run="run-other", round_index=0, source="client-0",
                             fingerprint=fp), "FAILED_PRECONDITION"),
        "wrong round": (stream(good, run=run, round_index=1, source="client-0",
                               fingerprint=fp), "FAILED_PRECONDITION"),
        "wrong fingerprint": (stream(own_knowledge(client, run, 0), run=run, round_index=0,
                                     source="client-0", fingerprint=_fingerprint(client)),
                              "FAILED_PRECONDITION"),
        "id >= vocab": (stream(_mutate(good, 1, topk_ids=ids_high), run=run, round_index=0,
                               source="client-0", fingerprint=fp), "INVALID_ARGUMENT"),
        "NaN logit": (stream(_mutate(good, 1, topk_logits=nan_logits), run=run, round_index=0,
                             source="client-0", fingerprint=fp), "INVALID_ARGUMENT"),
        "unknown id": (stream(_mutate(good, 1, sample_id="not-public"), run=run,
                              round_index=0, source="client-0", fingerprint=fp),
                       "FAILED_PRECONDITION"),
        "other tokens": (stream(_mutate(good, 1, token_ids=bad_tokens), run=run,
                                round_index=0, source="client-0", fingerprint=fp),
                         "FAILED_PRECONDITION"),
        "bad source name": (stream(good, run=run, round_index=0, source="../x",
                                   fingerprint=fp), "INVALID_ARGUMENT"),
        "cut short": (stream(long, run=run, round_index=0, source="client-0", fingerprint=fp,
                             max_bytes=1024)[:-1], "INVALID_ARGUMENT"),
        "empty": ([], "INVALID_ARGUMENT"),
    }
    for name, (chunks, code) in cases.items():
        with pytest.raises(WireError) as caught:
            server.receive_knowledge(run, 0, chunks)
        assert caught.value.code == code, name
        assert server.staged_sources(run, 0) == ["client-0"], name
        with server._open(server._folders(run), 0, "client-0") as staged:
            assert staged.digest == committed.digest, name
        leftovers = [p.name for p in committed.path.parent.iterdir() if p.name.startswith(".")]
        assert leftovers == [], name


# --------------------------------------------------------------------------- distillation


def _teacher(server: Participant, run: str, source: str, losses) -> None:
    samples = with_losses(own_knowledge(server, run, 0), losses)
    server.receive_knowledge(run, 0, stream(samples, run=run, round_index=0, source=source,
                                            fingerprint=_fingerprint(server)))


def test_a_teacher_worse_everywhere_gives_no_kd(server) -> None:
    n = len(server.public)
    _teacher(server, "run-worse", "client-0", [1e6] * n)
    metrics = server.distill("run-worse", 0)
    assert metrics["distilled_fraction"] == 0.0
    assert metrics["kd"] == 0.0 and metrics["selected/client-0"] == 0.0
    assert metrics["loss"] == pytest.approx(metrics["ce"])
    assert server.describe().latest_adapter_round == 0


def test_a_teacher_better_everywhere_is_always_used(server) -> None:
    n = len(server.public)
    _teacher(server, "run-better", "client-0", [0.0] * n)
    metrics = server.distill("run-better", 0)
    assert metrics["distilled_fraction"] == 1.0
    assert metrics["selected/client-0"] == n and metrics["kd"] > 0


def test_the_server_picks_the_best_client_per_sample(server) -> None:
    n = len(server.public)
    _teacher(server, "run-two", "client-a", [0.0 if i % 2 == 0 else 1e6 for i in range(n)])
    _teacher(server, "run-two", "client-b", [1e6 if i % 2 == 0 else 0.0 for i in range(n)])
    metrics = server.distill("run-two", 0)
    assert metrics["teachers"] == 2.0
    assert metrics["selected/client-a"] == (n + 1) // 2
    assert metrics["selected/client-b"] == n // 2
    assert metrics["distilled_fraction"] == 1.0


def test_fate_falls_back_to_the_students_snapshot(server) -> None:
    n = len(server.public)
    _teacher(server, "run-fate", "client-0", [1e6] * n)
    metrics = server.distill("run-fate", 0, strategy="fate")
    assert metrics["selected/self"] == n and metrics["selected/client-0"] == 0
    assert metrics["distilled_fraction"] == 1.0 and metrics["kd"] > 0


def test_distill_needs_staged_knowledge(server) -> None:
    with pytest.raises(FailedPrecondition, match="no knowledge staged"):
        server.distill("run-nothing", 3)
    with pytest.raises(InvalidArgument, match="strategy"):
        server.distill("run-nothing", 3, strategy="best")


def test_strategy_none_is_public_only_fine_tuning(server) -> None:
    """The baseline run: CE on the public data, no knowledge read, an adapter saved."""
    metrics = server.distill("run-baseline", 1, strategy="none")
    assert metrics["distilled_fraction"] == 0.0 and metrics["steps"] >= 1
    assert server.fetch_adapter(1).round == 1


def test_lambda_zero_is_pure_distillation(server) -> None:
    """λ = 0 is a real choice (not "use the configured 0.9"): the loss is the KD term alone."""
    n = len(server.public)
    _teacher(server, "run-lambda0", "client-0", [0.0] * n)  # better than the student everywhere
    metrics = server.distill("run-lambda0", 0, kd_alpha=0.0)
    assert metrics["distilled_fraction"] == 1.0
    assert metrics["loss"] == pytest.approx(metrics["kd"]) and metrics["loss"] != pytest.approx(
        metrics["ce"])


def test_adapters_of_an_earlier_run_stay_fetchable_by_run_id(server) -> None:
    server.distill("run-old", 2, strategy="none")
    server.distill("run-new", 0, strategy="none")  # now the current run
    assert server.fetch_adapter(-1).round == 0
    assert server.fetch_adapter(-1, "run-old").round == 2
    with pytest.raises(NotFound, match="run-never"):
        server.fetch_adapter(-1, "run-never")


def test_rerunning_distill_gives_the_same_adapter(server) -> None:
    n = len(server.public)
    _teacher(server, "run-redo", "client-0", [0.0] * n)
    server.distill("run-redo", 0)
    first = server.fetch_adapter(0).digest
    server.distill("run-redo", 0)
    assert server.fetch_adapter(0).digest == first


# --------------------------------------------------------------------------- evaluation


def test_evaluate_reports_accuracy_and_nll_but_never_on_private_data(client) -> None:
    metrics = client.evaluate("run-eval")
    assert 0.0 <= metrics["acc"] <= 1.0 and 0.0 <= metrics["acc_norm"] <= 1.0
    assert metrics["n"] == len(client.eval_split) and metrics["nll"] > 0
    # The NLL is read off the right choice's score: it equals a pass over the answers.
    passed = [s.loss for s in iter_knowledge(client.model, client.eval_split.encoded, k=1,
                                             batch_size=4, progress=False)]
    assert metrics["nll"] == pytest.approx(sum(passed) / len(passed), rel=1e-4)
    # One packed scoring pass and nothing else (no second pass for the NLL).
    assert 0 < metrics["work/forward_tokens"] < 2 * metrics["floor/forward_tokens"]
    assert metrics["floor/forward_tokens"] < sum(len(e) for e in client.eval_split.encoded) * 2
    # Per sample: one value per held-out sample and metric, whose means are the metrics.
    again, outcomes = client.evaluate_samples("run-eval")
    assert again["reused"] == 1.0  # the same adapter on the same split: the stored result
    assert outcomes.sample_ids == tuple(s.id for s in client.eval_split.samples)
    assert set(outcomes.values) == {"acc", "acc_norm", "nll"}
    for metric in ("acc", "acc_norm", "nll"):
        assert outcomes.column(metric).mean() == pytest.approx(metrics[metric])
    assert set(outcomes.column("acc")) <= {0.0, 1.0}
    by_id = {s.sample_id: s.loss for s in iter_knowledge(
        client.model, client.eval_split.encoded, k=1, batch_size=4, progress=False)}
    assert outcomes.column("nll") == pytest.approx([by_id[i] for i in outcomes.sample_ids],
                                                   rel=1e-4)
    public = client.evaluate("run-eval", "public")
    assert public["n"] == len(client.public)
    with pytest.raises(InvalidArgument, match="private"):
        client.evaluate("run-eval", "private")


# --------------------------------------------------------------------------- adapters


def test_push_adapter_replaces_weights_and_refuses_foreign_adapters(client, server) -> None:
    client.train_local("run-push", 0)
    blob = client.fetch_adapter(0)
    state = adapters.state_dict_from_bytes(blob.data)
    averaged = adapters.fedavg([state, {k: torch.zeros_like(v) for k, v in state.items()}])
    tensors, digest = client.push_adapter(0, adapters.state_dict_to_bytes(averaged))
    assert tensors == len(state)
    assert client.fetch_adapter(0).digest == digest
    assert _same(_lora(client), averaged)

    foreign = adapters.state_dict_to_bytes(_lora(server))
    with pytest.raises(InvalidArgument):
        client.push_adapter(0, foreign)
    assert _same(_lora(client), averaged)
    with pytest.raises(InvalidArgument):
        client.push_adapter(0, b"not safetensors")


def test_fetching_a_missing_round_is_not_found(client) -> None:
    client.train_local("run-fetch", 0)
    with pytest.raises(NotFound):
        client.fetch_adapter(9)


def test_distill_reuses_the_losses_its_knowledge_stream_computed(server) -> None:
    """The server's knowledge of round r and its distillation of round r + 1 see the same
    adapter: the student pass reads the stream's losses instead of running the data again."""
    n = len(server.public)
    teacher = with_losses(own_knowledge(server, "run-fresh", 0), [0.5] * n)
    for run in ("run-fresh", "run-reuse"):  # the same teacher for both runs
        server.receive_knowledge(run, 0, stream(teacher, run=run, round_index=0,
                                                source="client-0",
                                                fingerprint=_fingerprint(server)))
    fresh = server.distill("run-fresh", 0)

    knowledge = list(server.compute_knowledge("run-reuse", 0).samples)  # with the initial adapter
    reused = server.distill("run-reuse", 0)
    assert reused["selected/client-0"] == fresh["selected/client-0"] > 0
    assert reused["student_nll"] == pytest.approx(fresh["student_nll"], rel=1e-6)
    from fedmkt.models import adapters

    got = adapters.state_dict_from_bytes(server.fetch_adapter(0, "run-reuse").data)
    want = adapters.state_dict_from_bytes(server.fetch_adapter(0, "run-fresh").data)
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    pass_tokens = server.last_knowledge_work.done.forward_tokens
    assert pass_tokens >= sum(len(s.token_ids) for s in knowledge)
    assert fresh["work/forward_tokens"] - reused["work/forward_tokens"] == pass_tokens
    assert reused["work/backward_tokens"] == fresh["work/backward_tokens"] > 0
