"""Inference: a model directory -> summaries (greedy and beam) and teacher-forced scores.

The tiny model directory comes from :func:`tests.helpers.build_model_directory`. The model is seeded and
untrained: the tests compare decoding paths with each other, not with references.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from summarizer.config import ConfigError, EvaluateConfig
from summarizer.decoding import greedy_search
from summarizer.inference import SummarizerPipeline
from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID
from tests.helpers import GREEDY, TinyModel, build_model_directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_model_directory(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def greedy(tiny: TinyModel) -> SummarizerPipeline:
    return SummarizerPipeline.load(tiny.model_dir, GREEDY)


@pytest.fixture(scope="module")
def texts(tiny: TinyModel) -> list[str]:
    return [text for text, _ in tiny.test_pairs()]


def test_bad_decoding_setting_names_the_evaluate_key(tiny: TinyModel) -> None:
    with pytest.raises(ConfigError, match="evaluate.beam_widht"):
        SummarizerPipeline.load(tiny.model_dir, {"beam_widht": 2})
    with pytest.raises(ConfigError, match="evaluate.min_length"):
        SummarizerPipeline.load(tiny.model_dir, {"min_length": 0})


def test_settings_come_from_config_json(greedy: SummarizerPipeline) -> None:
    assert (greedy.settings.max_source_tokens, greedy.settings.max_target_tokens) == (40, 10)
    assert greedy.decoding == EvaluateConfig(**GREEDY)


def test_summary_equals_an_unpadded_eager_greedy_decode(greedy: SummarizerPipeline, texts: list[str]) -> None:
    """The padded, fixed-shape tf.function path gives the ids of a plain eager decode of one unpadded text."""
    source = tf.constant([greedy.source_ids([texts[0]])[0]], tf.int32)  # (1, source_time) without padding
    context, state = greedy.model.encode(source)
    expected = greedy_search(
        lambda ids, step_state: greedy.model.decode_step(ids, step_state, context),
        state,
        1,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        max_length=10,
        min_length=1,
    )
    expected_ids = expected.ids.numpy()[0, : int(expected.lengths[0])]
    assert len(expected_ids) >= 1
    assert greedy.summarize(texts[:1]) == [greedy.summary_of_ids(expected_ids, texts[0])]
    assert greedy.summarize(texts)[0] == greedy.summarize(texts[:1])[0]


def test_greedy_and_beam_width_one_give_identical_summaries(
    greedy: SummarizerPipeline, texts: list[str]
) -> None:
    beam_one = greedy.with_decoding({**GREEDY, "search": "beam", "beam_width": 1, "length_penalty": 0.0})
    summaries = greedy.summarize(texts)
    assert beam_one.summarize(texts) == summaries
    assert len(set(summaries)) > 1  # the texts differ, and so do their summaries


def test_batching_and_padding_rows_do_not_change_summaries(
    greedy: SummarizerPipeline, texts: list[str]
) -> None:
    whole = greedy.summarize(texts, batch_size=len(texts))
    assert greedy.summarize(texts, batch_size=3) == whole  # 3 + 3 + 3 + 1 (two padding rows)
    assert [greedy.summarize([text])[0] for text in texts[:3]] == whole[:3]


def test_each_batch_size_is_traced_once(greedy: SummarizerPipeline, texts: list[str]) -> None:
    pipeline = greedy.with_decoding(GREEDY)
    pipeline.summarize(texts, batch_size=3)
    pipeline.summarize(texts[:5], batch_size=3)
    assert pipeline._decoders[3].experimental_get_tracing_count() == 1


def test_beam_summaries_are_never_empty_and_respect_the_lengths(
    greedy: SummarizerPipeline, texts: list[str]
) -> None:
    beam = greedy.with_decoding({"search": "beam", "beam_width": 3, "max_length": 6, "min_length": 2})
    summaries = beam.summarize(texts)
    ids, lengths = beam.decoder(len(texts))(tf.constant(beam._padded(beam.source_ids(texts), len(texts))))
    assert all(2 <= length <= 6 for length in lengths.numpy())
    assert summaries == [
        beam.summary_of_ids(row[:length], text)
        for row, length, text in zip(ids.numpy(), lengths.numpy(), texts, strict=True)
    ]
    assert all(summary.strip() for summary in summaries)


def test_whitespace_only_pieces_fall_back_to_the_lead_word(greedy: SummarizerPipeline) -> None:
    space_piece = greedy.tokenizer.processor.piece_to_id("▁")
    assert greedy.tokenizer.decode([space_piece]).strip() == ""
    assert greedy.summary_of_ids([space_piece, PAD_ID], "  Zorblat  is a tool.") == "Zorblat"
    assert greedy.summary_of_ids([EOS_ID, BOS_ID], "quintex daemon") == "quintex"


def test_empty_text_is_rejected_naming_its_index(greedy: SummarizerPipeline) -> None:
    with pytest.raises(ValueError, match="text 1: empty"):
        greedy.summarize(["a tool for text editing", " \n\t "])


def test_texts_are_normalized_like_ingest(greedy: SummarizerPipeline, texts: list[str]) -> None:
    spaced = "  " + texts[0].replace(" ", "   ").replace("is a", "is\u00a0a") + "\n\n"
    assert greedy.source_ids([spaced]) == greedy.source_ids([texts[0]])


def test_score_equals_the_models_own_target_log_probs(greedy: SummarizerPipeline, tiny: TinyModel) -> None:
    pairs = tiny.test_pairs()[:5]
    total_nll, tokens = greedy.score(
        [text for text, _ in pairs], [summary for _, summary in pairs], batch_size=2
    )
    expected_nll, expected_tokens = 0.0, 0
    for text, summary in pairs:
        target = greedy.target_ids(summary)
        inputs = {
            "source_ids": tf.constant([greedy.source_ids([text])[0]]),
            "target_in": tf.constant([[BOS_ID, *target[:-1]]]),
            "target_out": tf.constant([target]),
        }
        expected_nll -= float(tf.reduce_sum(greedy.model.score(inputs)["target_log_probs"]))
        expected_tokens += len(target)
    assert tokens == expected_tokens
    assert total_nll == pytest.approx(expected_nll, rel=1e-4)
    assert total_nll / tokens > 1.0  # an untrained model is far from certain


def test_padding_row_sources_are_real_inputs(greedy: SummarizerPipeline) -> None:
    padded = greedy._padded([[5, 6, 7], [8]], 4)
    assert padded.shape == (4, 40) and padded.dtype == np.int32
    assert padded[:, :3].tolist() == [[5, 6, 7], [8, 0, 0], [5, 6, 7], [5, 6, 7]]
    assert not padded[:, 3:].any()
