//! The Porter stemmer as NLTK's `PorterStemmer()` runs it by default (its
//! `NLTK_EXTENSIONS` mode), which is what `rouge_score`'s `use_stemmer=True` calls:
//! M. F. Porter, "An algorithm for suffix stripping" (1980), with NLTK's departures —
//! a pool of irregular forms, `ies`/`ied` on four-letter words, `y → i` only after a
//! consonant that is not the whole stem, `alli`, `fulli` and `logi` in step 2, and a
//! two-letter vowel–consonant word counting as *o. A port of `nltk/stem/porter.py`
//! (3.9), step for step; ROUGE gives it lowercase ASCII letters and digits only.

/// The stem of `word` (lowercase ASCII; anything else is returned as it is).
pub fn stem(word: &str) -> String {
    if !word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return word.to_string();
    }
    if let Some(&(_, root)) = IRREGULAR.iter().find(|(form, _)| *form == word) {
        return root.to_string();
    }
    if word.len() <= 2 {
        return word.to_string();
    }
    let mut w = word.as_bytes().to_vec();
    for step in [step1a, step1b, step1c, step2, step3, step4, step5a, step5b] {
        w = step(w);
    }
    String::from_utf8(w).expect("ASCII in, ASCII out")
}

/// NLTK's pool of irregular forms and the stems it gives them.
const IRREGULAR: &[(&str, &str)] = &[
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

type Word = Vec<u8>;

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// Per letter, whether it is a consonant: not a vowel, and a `y` only where the letter
/// before it is not a consonant (or it starts the word).
fn consonants(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let consonant = match c {
            c if is_vowel(c) => false,
            b'y' => i == 0 || !flags[i - 1],
            _ => true,
        };
        flags.push(consonant);
    }
    flags
}

fn is_consonant(w: &[u8], i: usize) -> bool {
    consonants(&w[..=i])[i]
}

/// The measure m of `[C](VC){m}[V]`: how many vowel runs a consonant follows.
fn measure(stem: &[u8]) -> usize {
    consonants(stem).windows(2).filter(|pair| !pair[0] && pair[1]).count()
}

fn contains_vowel(stem: &[u8]) -> bool {
    consonants(stem).iter().any(|c| !c)
}

/// *d: a double consonant at the end.
fn ends_double_consonant(w: &[u8]) -> bool {
    w.len() >= 2 && w[w.len() - 1] == w[w.len() - 2] && is_consonant(w, w.len() - 1)
}

/// *o: consonant–vowel–consonant at the end, the last not w, x or y (NLTK: also a
/// two-letter vowel–consonant word).
fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    let flags = consonants(w);
    (n >= 3 && flags[n - 3] && !flags[n - 2] && flags[n - 1] && !matches!(w[n - 1], b'w' | b'x' | b'y')) || (n == 2 && !flags[0] && flags[1])
}

/// When a rule applies to what is left once its suffix is removed.
#[derive(Clone, Copy)]
enum Condition {
    Always,
    /// m > 0.
    Positive,
    /// m > 1.
    AboveOne,
    /// m > 1 and the stem ends in s or t (`ion`).
    AboveOneAfterSOrT,
    /// `logi` (NLTK): m > 0 of the word without its last three letters.
    LogiStem,
}

impl Condition {
    fn holds(self, stem: &[u8], word: &[u8]) -> bool {
        match self {
            Condition::Always => true,
            Condition::Positive => measure(stem) > 0,
            Condition::AboveOne => measure(stem) > 1,
            Condition::AboveOneAfterSOrT => measure(stem) > 1 && matches!(stem.last(), Some(b's' | b't')),
            Condition::LogiStem => measure(&word[..word.len() - 3]) > 0,
        }
    }
}

/// The first rule whose suffix ends the word decides: its replacement if its condition
/// holds, else the word unchanged (`_apply_rule_list`, without the `*d` rule).
fn apply_rules(w: Word, rules: &[(&str, &str, Condition)]) -> Word {
    for &(suffix, replacement, condition) in rules {
        if w.ends_with(suffix.as_bytes()) {
            let stem = &w[..w.len() - suffix.len()];
            return if condition.holds(stem, &w) { [stem, replacement.as_bytes()].concat() } else { w };
        }
    }
    w
}

fn step1a(w: Word) -> Word {
    if w.ends_with(b"ies") && w.len() == 4 {
        return [&w[..1], b"ie"].concat();
    }
    apply_rules(w, &[("sses", "ss", Condition::Always), ("ies", "i", Condition::Always), ("ss", "ss", Condition::Always), ("s", "", Condition::Always)])
}

fn step1b(w: Word) -> Word {
    if w.ends_with(b"ied") {
        let replacement: &[u8] = if w.len() == 4 { b"ie" } else { b"i" };
        return [&w[..w.len() - 3], replacement].concat();
    }
    if w.ends_with(b"eed") {
        let stem = &w[..w.len() - 3];
        return if measure(stem) > 0 { [stem, b"ee"].concat() } else { w };
    }
    let Some(stem) = [&b"ed"[..], b"ing"].iter().find_map(|suffix| w.strip_suffix(*suffix).filter(|stem| contains_vowel(stem))) else {
        return w;
    };
    let stem = stem.to_vec();
    for (suffix, replacement) in [(&b"at"[..], &b"ate"[..]), (b"bl", b"ble"), (b"iz", b"ize")] {
        if stem.ends_with(suffix) {
            return [&stem[..stem.len() - 2], replacement].concat();
        }
    }
    if ends_double_consonant(&stem) {
        let last = stem[stem.len() - 1];
        return if matches!(last, b'l' | b's' | b'z') { stem } else { stem[..stem.len() - 1].to_vec() };
    }
    if measure(&stem) == 1 && ends_cvc(&stem) {
        return [&stem[..], b"e"].concat();
    }
    stem
}

fn step1c(w: Word) -> Word {
    if w.ends_with(b"y") {
        let stem = &w[..w.len() - 1];
        if stem.len() > 1 && is_consonant(stem, stem.len() - 1) {
            return [stem, b"i"].concat();
        }
    }
    w
}

fn step2(w: Word) -> Word {
    if w.ends_with(b"alli") && measure(&w[..w.len() - 4]) > 0 {
        return step2([&w[..w.len() - 4], b"al"].concat());
    }
    use Condition::{LogiStem, Positive};
    apply_rules(
        w,
        &[
            ("ational", "ate", Positive),
            ("tional", "tion", Positive),
            ("enci", "ence", Positive),
            ("anci", "ance", Positive),
            ("izer", "ize", Positive),
            ("bli", "ble", Positive),
            ("alli", "al", Positive),
            ("entli", "ent", Positive),
            ("eli", "e", Positive),
            ("ousli", "ous", Positive),
            ("ization", "ize", Positive),
            ("ation", "ate", Positive),
            ("ator", "ate", Positive),
            ("alism", "al", Positive),
            ("iveness", "ive", Positive),
            ("fulness", "ful", Positive),
            ("ousness", "ous", Positive),
            ("aliti", "al", Positive),
            ("iviti", "ive", Positive),
            ("biliti", "ble", Positive),
            ("fulli", "ful", Positive),
            ("logi", "log", LogiStem),
        ],
    )
}

fn step3(w: Word) -> Word {
    use Condition::Positive;
    apply_rules(
        w,
        &[
            ("icate", "ic", Positive),
            ("ative", "", Positive),
            ("alize", "al", Positive),
            ("iciti", "ic", Positive),
            ("ical", "ic", Positive),
            ("ful", "", Positive),
            ("ness", "", Positive),
        ],
    )
}

fn step4(w: Word) -> Word {
    use Condition::{AboveOne, AboveOneAfterSOrT};
    apply_rules(
        w,
        &[
            ("al", "", AboveOne),
            ("ance", "", AboveOne),
            ("ence", "", AboveOne),
            ("er", "", AboveOne),
            ("ic", "", AboveOne),
            ("able", "", AboveOne),
            ("ible", "", AboveOne),
            ("ant", "", AboveOne),
            ("ement", "", AboveOne),
            ("ment", "", AboveOne),
            ("ent", "", AboveOne),
            ("ion", "", AboveOneAfterSOrT),
            ("ou", "", AboveOne),
            ("ism", "", AboveOne),
            ("ate", "", AboveOne),
            ("iti", "", AboveOne),
            ("ous", "", AboveOne),
            ("ive", "", AboveOne),
            ("ize", "", AboveOne),
        ],
    )
}

fn step5a(w: Word) -> Word {
    if let Some(stem) = w.strip_suffix(b"e") {
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w
}

fn step5b(w: Word) -> Word {
    if w.ends_with(b"ll") && measure(&w[..w.len() - 1]) > 1 {
        return w[..w.len() - 1].to_vec();
    }
    w
}

#[cfg(test)]
mod tests {
    use super::stem;

    /// Examples from Porter's paper and NLTK's departures from it.
    #[test]
    fn stems_as_the_paper_and_nltk_do() {
        for (word, want) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("enjoy", "enjoy"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("dying", "die"),
            ("skies", "sky"),
            ("controlling", "control"),
            ("a1b2", "a1b2"),
        ] {
            assert_eq!(stem(word), want, "{word}");
        }
    }
}
