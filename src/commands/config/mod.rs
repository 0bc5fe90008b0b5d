//! `imgforge.toml` and `imgforge config`: build and publish settings in a
//! `[defaults]` table and `[[image]]` variants that override it.
//!
//! - [`settings`]: the one table of keys (which subcommand and flag each
//!   becomes, how a value is checked);
//! - [`file`]: reading and merging the file, a variant's flags;
//! - [`expand`]: `--config`/`--image`/`--all` of build and upload;
//! - this file: `config show` and `config matrix`.

pub mod expand;
pub mod file;
pub mod settings;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

pub use expand::{Invocation, capture_json, expand, with_config_args};
use file::{ConfigFile, Variant};

use crate::commands::{BadInput, Outcome};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the merged settings ([defaults] under each [[image]]) and the flags they become.
    Show {
        /// The config file.
        #[arg(long, default_value = "imgforge.toml")]
        config: PathBuf,
        /// Only this variant.
        #[arg(long)]
        image: Option<String>,
    },
    /// Print the CI job matrix: one job per variant, for GitHub Actions (a
    /// `matrix=...` line for $GITHUB_OUTPUT) or as JSON (Buildkite, others).
    Matrix {
        /// The config file.
        #[arg(long, default_value = "imgforge.toml")]
        config: PathBuf,
        /// github: one `matrix={"include":[...]}` line; json: the array of jobs.
        #[arg(long, value_enum, default_value = "json")]
        format: MatrixFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MatrixFormat {
    Github,
    Json,
}

/// `config show` and `config matrix`; a wrong file is bad input (status 2).
pub fn run(args: &ConfigArgs) -> Outcome {
    match &args.command {
        ConfigCommand::Show { config, image } => {
            let file = ConfigFile::load(config).map_err(BadInput::from_error)?;
            let shown: Vec<Value> = match image {
                Some(name) => vec![file.variant(name).map_err(BadInput::from_error)?.to_json()],
                None => file.variants.iter().map(Variant::to_json).collect(),
            };
            Ok(Some(Value::Array(shown)))
        }
        ConfigCommand::Matrix { config, format } => {
            let file = ConfigFile::load(config).map_err(BadInput::from_error)?;
            let include = file
                .variants
                .iter()
                .map(|v| job(config, v))
                .collect::<Result<Vec<Value>, BadInput>>()?;
            match format {
                MatrixFormat::Github => {
                    println!(
                        "matrix={}",
                        serde_json::to_string(&json!({ "include": include }))?
                    );
                    Ok(None)
                }
                MatrixFormat::Json => Ok(Some(Value::Array(include))),
            }
        }
    }
}

/// One CI job: the variant's build and upload command lines, shell-safe,
/// uploading the file the build writes (the variant's `output`).
fn job(config: &Path, variant: &Variant) -> Result<Value, BadInput> {
    let all = variant.to_json();
    let config = config.to_str().ok_or_else(|| {
        BadInput::new(format!(
            "{}: the config file's path is not UTF-8; a CI command line cannot name it",
            config.display()
        ))
    })?;
    let (config, name, output) = (
        shell_word(config),
        shell_word(&variant.name),
        shell_word_path(&variant.output(), &variant.name)?,
    );
    Ok(json!({
        "image": variant.name,
        "distro": all.get("distro"),
        "size_class": all.get("size_class"),
        "output": variant.output(),
        "build": format!("imgforge build --config {config} --image {name}"),
        "upload": format!("imgforge upload {output} --config {config} --image {name}"),
    }))
}

/// A word a POSIX shell reads back as it is: unchanged when it only has
/// safe characters, else in single quotes (a `'` inside becomes `'\''`).
fn shell_word(word: &str) -> Cow<'_, str> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-.,/:=@%+".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

/// An output path for a command line; a newline in it cannot go into a CI
/// matrix line, so such a variant is refused.
fn shell_word_path(path: &str, variant: &str) -> Result<String, BadInput> {
    if path.contains(['\n', '\r']) {
        return Err(BadInput::new(format!(
            "[[image]] {variant:?}: its output {path:?} has a line break; choose a plain file name"
        )));
    }
    Ok(shell_word(path).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("trading-large.raw"), "trading-large.raw");
        assert_eq!(shell_word("out/a b.raw"), "'out/a b.raw'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word("$(rm -rf ~)"), "'$(rm -rf ~)'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn a_job_uploads_the_variants_output() {
        let text = "[[image]]\nname = \"web\"\noutput = \"out dir/web-{image}.raw\"\n\
                    [[image]]\nname = \"db\"\n";
        let file = ConfigFile::parse(Path::new("ci/my fleet.toml"), text).unwrap();
        let web = job(&file.path, &file.variants[0]).unwrap();
        assert_eq!(
            web["upload"],
            "imgforge upload 'out dir/web-web.raw' --config 'ci/my fleet.toml' --image web"
        );
        let db = job(&file.path, &file.variants[1]).unwrap();
        assert_eq!(
            db["upload"],
            "imgforge upload db.raw --config 'ci/my fleet.toml' --image db"
        );
        assert_eq!(
            db["build"],
            "imgforge build --config 'ci/my fleet.toml' --image db"
        );
    }
}
