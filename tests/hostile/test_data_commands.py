"""The data commands against names and files chosen to hurt: ``curate`` refuses a bad
``--into`` and a ``--manifest`` it must not write before any of its work (it once failed with a
traceback after all of it, and overwrote a collection's ``state``), and ``eval`` refuses a
folder it cannot evaluate before embedding anything, in a message of a few lines (10,000
one-image classes once cost 4.5 minutes of embedding and a 200 KB error line).

The real CLI on the real embedded store, with the stand-in model (counted where the test is
about whether it ran)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dinoseek.embedder_protocol import ImageEmbedder, Pixels, VectorOrError
from dinoseek.errors import CollectionNotFoundError, ProbeTrainingError
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.runtime import ModelLoader
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from dinoseek_cli.main import main
from tests.fakes import fake_model
from tests.helpers import encode, photo, unit_vectors, write_tree

MAX_MESSAGE_CHARS = 500  # a few names, a count and what to do (all 10,000 names: 200 KB)


@dataclass
class Counted:
    """What the stand-in model was asked to do."""

    loads: int = 0
    images: list[int] = field(default_factory=list)

    def loader(self) -> ModelLoader:
        def load(model_id: str, settings: Settings) -> ImageEmbedder:
            self.loads += 1
            return CountingEmbedder(fake_model(model_id), self)

        return ModelLoader(load=load)


class CountingEmbedder(FakeEmbedder):
    """The stand-in model, counting the images it embeds."""

    def __init__(self, model: FakeEmbedder, counted: Counted) -> None:
        super().__init__(model_id=model.model_id, seed=model.seed)
        self.counted = counted

    def embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        self.counted.images.append(len(pixels))
        return super().embed_each(pixels)


def run(counted: Counted, *args: str | Path) -> Result:
    """``dinoseek ARGS`` with the counting stand-in."""
    return CliRunner().invoke(main, [str(a) for a in args], obj=counted.loader())


def error_line(result: Result) -> str:
    """The last line on stderr: the message the user reads."""
    return result.stderr.strip().splitlines()[-1]


# -- curate ---------------------------------------------------------------------------------


@pytest.fixture
def pool(tmp_path: Path) -> tuple[Path, Path]:
    """(data dir, a reference folder): a pool of 12 images indexed into ``images``."""
    write_tree(tmp_path / "photos", per_class=6, classes=("cats", "dogs"))
    data = tmp_path / "data"
    indexed = run(Counted(), "index", tmp_path / "photos", "--model", "fake/dinov2",
                  "--data-dir", data, "--workers", "0", "-q")  # fmt: skip
    assert indexed.exit_code == 0, indexed.output
    reference = tmp_path / "reference"
    write_tree(reference, per_class=2, classes=("good",))
    return data, reference


@pytest.mark.parametrize("into", ["bad/name", "../escape", "", ".hidden", "x" * 65])
def test_curate_refuses_a_bad_into_name_before_any_work(pool: tuple[Path, Path], into: str) -> None:
    data, reference = pool
    counted = Counted()
    result = run(counted, "curate", "--reference", reference, "--into", into, "--data-dir", data)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--into'" in result.output
    assert "invalid collection name" in result.output
    assert counted.loads == 0  # no model loaded, no reference embedded


def test_curate_refuses_an_into_collection_that_exists_before_any_work(
    pool: tuple[Path, Path],
) -> None:
    data, reference = pool
    counted = Counted()
    result = run(counted, "curate", "--reference", reference, "--into", "images",
                 "--data-dir", data)  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "collection 'images' already exists" in error_line(result)
    assert counted.loads == 0


def test_curate_never_overwrites_a_manifest_unless_told(
    pool: tuple[Path, Path], tmp_path: Path
) -> None:
    data, reference = pool
    manifest = tmp_path / "kept.jsonl"
    manifest.write_text("mine\n")
    counted = Counted()
    args = ("curate", "--reference", reference, "--manifest", manifest, "--data-dir", data)
    refused = run(counted, *args)
    assert refused.exit_code == 2, refused.output
    assert f"{manifest} exists; pass --overwrite" in refused.output
    assert manifest.read_text() == "mine\n"
    assert counted.loads == 0
    replaced = run(counted, *args, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert lines
    assert all(line["reference"].startswith(str(reference)) for line in lines)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".kept")] == []


def test_curate_never_writes_a_manifest_inside_the_data_directory(
    pool: tuple[Path, Path], tmp_path: Path
) -> None:
    data, reference = pool
    state = data / "images" / "state"
    before = state.read_bytes()
    link = tmp_path / "innocent.jsonl"
    link.symlink_to(state)  # a name outside that leads inside
    for target in (state, data / "new.jsonl", link):
        result = run(Counted(), "curate", "--reference", reference, "--manifest", target,
                     "--overwrite", "--data-dir", data)  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "inside the data directory" in result.output
    assert state.read_bytes() == before
    assert not (data / "new.jsonl").exists()


# -- eval -----------------------------------------------------------------------------------


def one_image_classes(folder: Path, count: int) -> None:
    """``count`` classes of one small image each, each of its own content (bytes after the
    end of the JPEG, which decoders ignore)."""
    data = encode(photo(0, (32, 24)))
    for index in range(count):
        (folder / f"class-{index:05d}").mkdir(parents=True)
        (folder / f"class-{index:05d}" / "only.jpg").write_bytes(data + b"%05d" % index)


def test_eval_refuses_one_image_classes_before_embedding_in_a_short_message(
    tmp_path: Path,
) -> None:
    one_image_classes(tmp_path / "photos", 2000)
    counted = Counted()
    result = run(counted, "eval", tmp_path / "photos", "--labels-from-folders",
                 "--model", "fake/dinov2")  # fmt: skip
    assert counted.loads == 0
    assert counted.images == []
    assert result.exit_code == 2, result.output
    assert len(result.stderr) < MAX_MESSAGE_CHARS
    message = error_line(result)
    assert "at least two classes with 5 or more labelled images" in message
    assert "0 of 2,000 classes" in message
    assert "and 1,995 more" in message


def test_eval_lists_few_of_many_left_out_classes(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=5, classes=("cats", "dogs"))
    one_image_classes(photos, 300)
    result = run(Counted(), "eval", photos, "--labels-from-folders", "--model", "fake/dinov2",
                 "--draws", "1", "--shots", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    (line,) = [text for text in result.stdout.splitlines() if "left out" in text]
    assert "300 classes" in line
    assert "and 295 more" in line
    assert len(line) < MAX_MESSAGE_CHARS


# -- other messages that name what the user made --------------------------------------------


def test_a_probe_of_too_few_classes_names_a_few_of_many(tmp_path: Path) -> None:
    from dinoseek.probe import train_probe

    labels = [f"class-{i:05d}" for i in range(5000)]
    with pytest.raises(ProbeTrainingError) as refused:
        train_probe(unit_vectors(5000, 8), labels, name="p", model_id="m")
    assert "0 of 5000 qualify" in refused.value.message
    assert "and 4,995 more" in refused.value.message
    assert len(refused.value.message) < MAX_MESSAGE_CHARS


def test_an_unknown_collection_names_a_few_of_many(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for index in range(3000):  # what list_collections counts: a folder with its metadata
        (data / f"c{index:05d}").mkdir(parents=True)
        (data / f"c{index:05d}" / "collection.json").write_text("{}")
    with EdgeStore(data) as store, pytest.raises(CollectionNotFoundError) as refused:
        store.acquire("missing")
    assert "c00000, c00001, c00002, c00003, c00004 and 2,995 more" in refused.value.message
    assert len(refused.value.message) < MAX_MESSAGE_CHARS
