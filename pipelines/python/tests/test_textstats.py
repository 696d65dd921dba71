import unittest

import textstats


class WordsTest(unittest.TestCase):
    def test_words_are_letters_lower_cased(self):
        self.assertEqual(textstats.words("Hello, World! 42 times"), ["hello", "world", "times"])

    def test_apostrophes_stay_inside_words(self):
        self.assertEqual(textstats.words("It's the step's log"), ["it's", "the", "step's", "log"])

    def test_letters_beyond_ascii(self):
        self.assertEqual(textstats.words("Grüße aus Zürich"), ["grüße", "aus", "zürich"])


class LinesTest(unittest.TestCase):
    def test_a_last_line_without_newline_counts(self):
        self.assertEqual(textstats.line_count("a\nb"), 2)
        self.assertEqual(textstats.line_count("a\nb\n"), 2)
        self.assertEqual(textstats.line_count(""), 0)


class MostCommonTest(unittest.TestCase):
    def test_ties_keep_the_order_of_first_appearance(self):
        text = "b a b c a d"
        self.assertEqual(textstats.most_common(text, 3), ["b", "a", "c"])


if __name__ == "__main__":
    unittest.main()
