"""The gold judgement on known cases."""
import pytest

from instructjax.world.correctness import content, correctness, exact_match, levenshtein


@pytest.mark.parametrize("a,b,d", [
    ("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3), ("flaw", "lawn", 2),
    ("1 2 5 8", "1 2 5 8", 0), ("owl dog cat", "cat dog owl", 6), ("ab", "ba", 2),
])
def test_levenshtein(a, b, d):
  assert levenshtein(a, b) == d
  assert levenshtein(b, a) == d


def test_content_strips_one_prefix():
  assert content("sure! 1 2 5 8") == "1 2 5 8"
  assert content("sure! sure! 1 2") == "sure! 1 2"
  assert content("sure!1 2") == "sure!1 2"  # Without the space it is not the prefix.
  assert content(" sure! 1 2") == " sure! 1 2"


@pytest.mark.parametrize("response,finished,gold,c", [
    ("1 2 5 8", True, "1 2 5 8", 1.0),
    ("sure! 1 2 5 8", True, "1 2 5 8", 1.0),
    ("1 2 5 8", False, "1 2 5 8", 0.0),  # Unfinished scores 0 even when exact.
    ("sure! 1 2 5 8", False, "1 2 5 8", 0.0),
    ("1 2 5 9", True, "1 2 5 8", 1 - 1 / 7),
    ("1 2 5 8 9", True, "1 2 5 8", 1 - 2 / 9),  # Denominator is the longer string.
    ("sun sun", True, "sun sun sun", 1 - 4 / 11),
    ("", True, "SUN", 0.0),
    ("sure! ", True, "SUN", 0.0),
    ("xyzw", True, "SUN", 0.0),  # lev 4 / max 4.
    ("sure! sure! SUN", True, "SUN", 1 - 6 / 9),  # Only one prefix is removed.
    ("", True, "", 1.0),  # max(..., 1) guards the empty case.
])
def test_correctness_known_cases(response, finished, gold, c):
  assert correctness(response, finished, gold) == pytest.approx(c)


def test_correctness_is_clipped_and_bounded():
  for resp in ["a", "SUN MAP", "x" * 50, "sure! " + "y" * 30]:
    c = correctness(resp, True, "SUN MAP")
    assert 0.0 <= c <= 1.0


def test_exact_match():
  assert exact_match("sure! owl dog cat", True, "owl dog cat")
  assert exact_match("owl dog cat", True, "owl dog cat")
  assert not exact_match("owl dog cat", False, "owl dog cat")
  assert not exact_match("owl dog cat ", True, "owl dog cat")
