"""The TFDS source on a real prepared dataset (ArrayRecord, built here; nothing downloaded).

TFDS needs TensorFlow to encode images, which is not a dependency, so the dataset built
here is text-only, shaped like cnn_dailymail (the MIR paper's text source).
"""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from mir_jax.data import ByteTokenizer, TFDSSource, make_mir_batches  # noqa: E402
from mir_jax.data.errors import DataError  # noqa: E402

ARTICLES = [f"story number {i} about the weather" for i in range(5)]


@pytest.fixture(scope="module")
def cnn_like(tmp_path_factory):
    class CnnDailymail(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("3.4.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "article": tfds.features.Text(), "highlights": tfds.features.Text(),
                "id": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for i, article in enumerate(ARTICLES):
                yield i, {"article": article, "highlights": f"highlight {i}", "id": str(i)}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    CnnDailymail(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_text_source_reads_prepared_data(cnn_like):
    source = TFDSSource("cnn_dailymail", data_dir=cnn_like, split="test")
    assert len(source) == len(ARTICLES)
    records = [source[i] for i in range(len(source))]
    assert all(r["kind"] == "text" for r in records)
    assert sorted(r["text"] for r in records) == sorted(ARTICLES)  # the article, not the highlights
    assert len({r["id"] for r in records}) == len(ARTICLES)


def test_tfds_texts_feed_mir_batches(cnn_like):
    tok = ByteTokenizer()
    texts = TFDSSource("cnn_dailymail", data_dir=cnn_like, split="test")
    batches = make_mir_batches("synthetic", texts, tokenizer=tok, num_samples=3, image_size=32,
                               num_image_tokens=4, batch_size=3, seq_len=256)
    decoded = [tok.decode([int(t) for t in row if t > 3]) for row in np.asarray(batches[0]["input_ids"])]
    stories = [texts[i]["text"] for i in range(3)]
    for row, story in zip(decoded, stories):
        assert row.endswith(" ASSISTANT: " + story)


def test_tfds_unprepared_split_is_a_clear_error(cnn_like):
    with pytest.raises(DataError, match="not prepared"):
        TFDSSource("cnn_dailymail", data_dir=cnn_like, split="train")
