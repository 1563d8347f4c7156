//! The engine's input: a prompt as an ordered list of text pieces and special tokens.
//!
//! Pieces are ordered from most stable to most volatile, so that the longest common token prefix
//! with the previous job covers as much as possible. Special tokens are named by role and mapped
//! to the model's vocabulary by the engine; nothing here knows llama.cpp or a model's name.

/// A special token by role; the engine maps it to the model's own token id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Special {
    /// Beginning of sequence, only emitted for models that want one.
    Bos,
    FimPrefix,
    FimSuffix,
    FimMiddle,
    /// Separates files of the same repository in repository-level prompts.
    FileSeparator,
    /// Introduces the repository name in repository-level prompts.
    RepoName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Special(Special),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompt {
    pub pieces: Vec<Piece>,
}

impl Prompt {
    pub fn push_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if !text.is_empty() {
            self.pieces.push(Piece::Text(text));
        }
    }

    pub fn push_special(&mut self, special: Special) {
        self.pieces.push(Piece::Special(special));
    }

    /// All text of the prompt, special tokens shown by role: for logs and tests.
    pub fn to_debug_string(&self) -> String {
        let mut res = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => res.push_str(text),
                Piece::Special(special) => res.push_str(&format!("<{special:?}>")),
            }
        }
        res
    }
}

/// Which special roles the loaded model's vocabulary has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpecialSupport {
    pub fim: bool,
    pub file_separator: bool,
    pub repo_name: bool,
    pub bos: bool,
}
