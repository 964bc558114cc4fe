//! Synthetic sequence tasks — copy, reverse, sort, addition — written as text such as
//! `"3141=1413"`, so a character tokenizer reads them and a prompt like `"3141="` can
//! be completed by generation. They train in seconds on a CPU and give attention
//! patterns worth looking at (reverse: an anti-diagonal).

use tch::{Kind, Tensor};

use super::{Batch, Rng};
use crate::error::{invalid, Result};
use crate::tokenize::Tokenizer;

/// Which task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `abc=abc`
    Copy,
    /// `abc=cba`
    Reverse,
    /// `cab=abc`
    Sort,
    /// `12+34=046`: the sum, zero-padded to one digit more than the operands.
    Add,
}

impl Task {
    /// Reads a task name.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "copy" => Ok(Task::Copy),
            "reverse" => Ok(Task::Reverse),
            "sort" => Ok(Task::Sort),
            "add" => Ok(Task::Add),
            other => invalid!("unknown synthetic task `{other}`; choose copy, reverse, sort or add"),
        }
    }
}

/// A synthetic task with its sizes. Examples are drawn from a generator the caller
/// owns, so that the data cursor is part of the training state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synth {
    /// The task.
    pub task: Task,
    /// Symbols per input (digits per operand for `add`).
    pub length: usize,
    /// How many distinct symbols inputs use (10 for `add`).
    pub symbols: usize,
}

const ALPHABET: &str = "0123456789abcdefghijklmnopqrstuvwxyz";

impl Synth {
    /// A task over `symbols` symbols (at most 36) with inputs of `length`.
    pub fn new(task: Task, length: usize, symbols: usize) -> Result<Self> {
        let symbols = if task == Task::Add { 10 } else { symbols };
        if !(2..=ALPHABET.len()).contains(&symbols) {
            return invalid!("--symbols must be between 2 and {}, got {symbols}", ALPHABET.len());
        }
        if length == 0 || length > 64 {
            return invalid!("--length must be between 1 and 64, got {length}");
        }
        Ok(Synth { task, length, symbols })
    }

    /// The text every example is written in: the symbols, `+` and `=`.
    pub fn alphabet(&self) -> String {
        format!("{}+=", &ALPHABET[..self.symbols])
    }

    /// A character tokenizer for this task's text.
    pub fn tokenizer(&self) -> Tokenizer {
        Tokenizer::char_level(&self.alphabet()).expect("the alphabet is not empty")
    }

    /// Characters in a whole example: prompt and answer.
    pub fn example_len(&self) -> usize {
        match self.task {
            Task::Add => 2 * self.length + 2 + self.length + 1,
            _ => 2 * self.length + 1,
        }
    }

    /// One example: the prompt (ending in `=`) and its answer.
    pub fn example(&self, rng: &mut Rng) -> (String, String) {
        let mut symbols = |n: usize| -> Vec<u8> { (0..n).map(|_| ALPHABET.as_bytes()[rng.below(self.symbols as u64) as usize]).collect() };
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("ASCII");
        match self.task {
            Task::Add => {
                let (a, b) = (symbols(self.length), symbols(self.length));
                // Digit by digit, as on paper: operands of up to 64 digits outgrow any integer type.
                let mut sum = vec![b'0'; self.length + 1];
                let mut carry = 0;
                for i in (0..self.length).rev() {
                    let digit = (a[i] - b'0') + (b[i] - b'0') + carry;
                    sum[i + 1] = b'0' + digit % 10;
                    carry = digit / 10;
                }
                sum[0] = b'0' + carry;
                (format!("{}+{}=", text(&a), text(&b)), text(&sum))
            }
            task => {
                let input = symbols(self.length);
                let mut output = input.clone();
                match task {
                    Task::Reverse => output.reverse(),
                    Task::Sort => output.sort_unstable(),
                    _ => {}
                }
                (format!("{}=", text(&input)), text(&output))
            }
        }
    }

    /// A batch of `batch` examples. As next-token training pairs, inputs and targets
    /// `(batch, example_len - 1)` with targets on the prompt -100 (ignored), so only the
    /// answer is learnt. With `seq2seq`, as an encoder–decoder learns them: the prompt
    /// before its `=` is the source, and the decoder reads `=` and the answer but its
    /// last symbol, to give the answer.
    pub fn batch(&self, batch: usize, seq2seq: bool, tokenizer: &Tokenizer, rng: &mut Rng) -> Result<Batch> {
        let ids_of = |text: &str| -> Result<Vec<i64>> {
            // The whole example is data, so no truncation to the model's input length.
            let ids = tokenizer.encode_corpus(text)?;
            if ids.len() != text.chars().count() {
                return invalid!(
                    "this tokenizer reads a {}-character example as {} tokens; synthetic tasks need one token per character (their own tokenizer)",
                    text.chars().count(),
                    ids.len()
                );
            }
            Ok(ids)
        };
        let (mut sources, mut inputs, mut targets) = (vec![], vec![], vec![]);
        for _ in 0..batch {
            let (prompt, answer) = self.example(rng);
            if seq2seq {
                sources.extend(ids_of(&prompt[..prompt.len() - 1])?);
                let target = ids_of(&format!("={answer}"))?;
                inputs.extend_from_slice(&target[..target.len() - 1]);
                targets.extend_from_slice(&target[1..]);
            } else {
                let ids = ids_of(&format!("{prompt}{answer}"))?;
                let t = ids.len() - 1;
                inputs.extend_from_slice(&ids[..t]);
                let answer_from = prompt.len() - 1;
                targets.extend((1..=t).map(|i| if i - 1 >= answer_from { ids[i] } else { -100 }));
            }
        }
        let rows = |ids: Vec<i64>| Tensor::from_slice(&ids).view([batch as i64, -1]).to_kind(Kind::Int64);
        let source = (!sources.is_empty()).then(|| rows(sources));
        Ok(Batch { source, ..Batch::plain(rows(inputs), rows(targets)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_correct_and_seeded() {
        let task = Synth::new(Task::Reverse, 5, 10).unwrap();
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..20 {
            let (p, ans) = task.example(&mut a);
            assert_eq!(task.example(&mut b), (p.clone(), ans.clone()));
            assert_eq!(p.trim_end_matches('=').chars().rev().collect::<String>(), ans);
        }
        let add = Synth::new(Task::Add, 3, 10).unwrap();
        let mut rng = Rng::new(1);
        for _ in 0..20 {
            let (p, ans) = add.example(&mut rng);
            let (x, y) = p.trim_end_matches('=').split_once('+').unwrap();
            assert_eq!(x.parse::<u32>().unwrap() + y.parse::<u32>().unwrap(), ans.parse::<u32>().unwrap());
            assert_eq!(p.len() + ans.len(), add.example_len());
        }
    }

    #[test]
    fn batch_masks_the_prompt() {
        let s = Synth::new(Task::Sort, 4, 6).unwrap();
        let tok = s.tokenizer();
        let batch = s.batch(2, false, &tok, &mut Rng::new(3)).unwrap();
        assert_eq!(batch.inputs.size(), vec![2, 8]);
        assert!(batch.source.is_none());
        let row: Vec<i64> = Vec::try_from(batch.targets.get(0)).unwrap();
        // "abcd=" then four answer characters: the answer's first one is predicted at position 4.
        assert_eq!(&row[..4], &[-100, -100, -100, -100]);
        assert!(row[4..].iter().all(|&t| t >= 0));
    }

    #[test]
    fn seq2seq_batches_are_the_same_examples_as_source_and_target() {
        let s = Synth::new(Task::Add, 3, 10).unwrap();
        let tok = s.tokenizer();
        let (plain, pairs) = (s.batch(4, false, &tok, &mut Rng::new(9)).unwrap(), s.batch(4, true, &tok, &mut Rng::new(9)).unwrap());
        let text = |t: Tensor| tok.decode(&Vec::<i64>::try_from(t).unwrap()).unwrap();
        let source = pairs.source.unwrap();
        assert_eq!((source.size(), pairs.inputs.size(), pairs.targets.size()), (vec![4, 7], vec![4, 4], vec![4, 4]));
        for row in 0..4 {
            let (prompt, input, answer) = (text(source.get(row)), text(pairs.inputs.get(row)), text(pairs.targets.get(row)));
            assert_eq!(text(plain.inputs.get(row)), format!("{prompt}={}", &answer[..3]), "the same example either way");
            assert_eq!(input, format!("={}", &answer[..3]), "the decoder reads `=` and the answer but its last symbol");
        }
    }

    #[test]
    fn long_additions_are_right_at_every_accepted_length() {
        // 64-digit operands overflow u128; the check goes through decimal strings column by column.
        let add = Synth::new(Task::Add, 64, 10).unwrap();
        let mut rng = Rng::new(5);
        for _ in 0..50 {
            let (p, ans) = add.example(&mut rng);
            let (a, b) = p.trim_end_matches('=').split_once('+').unwrap();
            assert_eq!(ans.len(), 65);
            // a + b == ans  <=>  ans - b == a, subtracted column by column.
            let (mut borrow, mut diff) = (0i64, String::new());
            for i in (0..65).rev() {
                let x = ans.as_bytes()[i] as i64 - 48;
                let y = if i >= 1 { b.as_bytes()[i - 1] as i64 - 48 } else { 0 };
                let mut d = x - y - borrow;
                borrow = i64::from(d < 0);
                if d < 0 {
                    d += 10;
                }
                diff.insert(0, char::from(b'0' + d as u8));
            }
            assert_eq!(borrow, 0);
            assert_eq!(&diff[1..], a, "{p}{ans}");
            assert_eq!(&diff[..1], "0");
        }
        for length in 1..=64 {
            assert_eq!(Synth::new(Task::Add, length, 10).unwrap().example(&mut rng).1.len(), length + 1);
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(Synth::new(Task::Copy, 0, 10).unwrap_err().to_string().contains("--length"));
        assert!(Task::parse("revers").unwrap_err().to_string().contains("reverse"));
    }
}
