"""Reasoning ``encrypted_content``: sealed with a key in DATA_DIR, verified when replayed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from egemma.errors import InvalidRequestError, UnavailableError
from egemma.services.responses.sealing import KEY_FILE, ReasoningSeal, load_key


def test_round_trip_and_key_file(tmp_path: Path) -> None:
    seal = ReasoningSeal.from_data_dir(tmp_path / "data")
    text = "Think: the user wants é and ☃.\n" * 50
    sealed = seal.seal(text)
    assert sealed.startswith("egr1.")
    assert text not in sealed  # compressed, not plain text on the wire
    assert seal.open(sealed, param="p") == text
    key_file = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The same key after a restart: earlier values still open.
    assert ReasoningSeal.from_data_dir(tmp_path / "data").open(sealed, param="p") == text
    assert load_key(tmp_path / "data") == load_key(tmp_path / "data")


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"),  # tag
        lambda s: s[:6] + ("A" if s[6] != "A" else "B") + s[7:],  # body
        lambda s: s.replace("egr1.", "egr2."),
        lambda s: s.split(".")[0] + "." + s.split(".")[1],  # tag removed
        lambda s: "not sealed at all",
        lambda s: "",
    ],
)
def test_tampered_values_are_400(tmp_path: Path, change: object) -> None:
    seal = ReasoningSeal.from_data_dir(tmp_path)
    sealed = seal.seal("secret plan")
    with pytest.raises(InvalidRequestError) as err:
        seal.open(change(sealed), param="input[3].encrypted_content")  # type: ignore[operator]
    assert err.value.code == "invalid_encrypted_content"
    assert err.value.param == "input[3].encrypted_content"


def test_another_servers_value_is_400(tmp_path: Path) -> None:
    ours = ReasoningSeal.from_data_dir(tmp_path / "a")
    theirs = ReasoningSeal.from_data_dir(tmp_path / "b")
    with pytest.raises(InvalidRequestError):
        ours.open(theirs.seal("their reasoning"), param="p")


def test_open_items_restores_content_from_the_seal(tmp_path: Path) -> None:
    seal = ReasoningSeal.from_data_dir(tmp_path)
    replayed = {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "edited by the client"}],
        "encrypted_content": seal.seal("what the model thought"),
    }
    seal.open_items([replayed])
    assert replayed["content"] == [{"type": "reasoning_text", "text": "what the model thought"}]


def test_key_is_created_on_first_use_and_an_unwritable_dir_is_503(tmp_path: Path) -> None:
    seal = ReasoningSeal.from_data_dir(tmp_path / "data")
    assert not (tmp_path / "data" / KEY_FILE).exists()  # nothing written until needed
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    broken = ReasoningSeal.from_data_dir(blocked)
    with pytest.raises(UnavailableError) as err:
        broken.seal("x")
    assert err.value.status_code == 503
    assert seal.open(seal.seal("x"), param="p") == "x"


def test_a_sealed_value_opens_only_for_its_purpose(tmp_path: Path) -> None:
    seal = ReasoningSeal.from_data_dir(tmp_path)
    compaction = seal.seal("earlier turns", purpose="compaction")
    reasoning = seal.seal("thinking")
    assert seal.open(compaction, param="p", purpose="compaction") == "earlier turns"
    assert seal.open(reasoning, param="p") == "thinking"
    with pytest.raises(InvalidRequestError):
        seal.open(compaction, param="p")  # a compaction summary is not reasoning
    with pytest.raises(InvalidRequestError):
        seal.open(reasoning, param="p", purpose="compaction")
