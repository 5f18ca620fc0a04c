//! "Did you mean …": suggestions for a mistyped command, service, endpoint or flag.
//!
//! A word that is not a built-in command names a service, so a typo of a built-in (`micro sevices`) would go to
//! the registry and fail in a way that depends on the server being up. [`builtin_typo`] catches it first, offline:
//! a word within a small edit distance of a built-in command is a typo of it (bad input, exit 128), unless the
//! schema cache knows a service of that very name. Unknown services, endpoints and flags get the close names in
//! their error ([`did_you_mean`]).

use crate::exit::CliError;
use crate::settings::Settings;

/// Whether `word` is a typo of the command `name`: a different case, or (Damerau–Levenshtein, case-insensitive)
/// one transposition of a name of up to 3 letters, one edit of a name of 4 to 7, two edits of a longer one.
pub fn is_typo(word: &str, name: &str) -> bool {
    let (word, name) = (word.to_lowercase(), name.to_lowercase());
    if word == name {
        return true;
    }
    let distance = strsim::osa_distance(&word, &name);
    match word.chars().count().min(name.chars().count()) {
        0..=2 => false,
        3 => {
            // Only a swap of two letters: `evn`, `rnu`. A 3-letter service name a letter away is too likely.
            let sorted = |s: &str| {
                let mut c: Vec<char> = s.chars().collect();
                c.sort_unstable();
                c
            };
            distance == 1 && sorted(&word) == sorted(&name)
        }
        4..=7 => distance <= 1,
        _ => distance <= 2,
    }
}

/// Whether `candidate` is close enough to `word` to suggest it (looser than [`is_typo`]: it only adds a hint):
/// at most one edit in three letters, case aside, of what follows their common prefix (so that
/// `Helloworld.Nope` is not close to `Helloworld.Call`).
fn is_close(word: &str, candidate: &str) -> bool {
    let (word, candidate) = (word.to_lowercase(), candidate.to_lowercase());
    let common = word.chars().zip(candidate.chars()).take_while(|(a, b)| a == b).count();
    let rest = (word.chars().count() - common).min(candidate.chars().count() - common);
    strsim::osa_distance(&word, &candidate) <= (rest / 3).max(1)
}

/// The candidates close to `word`, closest first (at most three).
pub fn close<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut found: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter(|c| *c != word && is_close(word, c))
        .map(|c| (strsim::osa_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .collect();
    found.sort();
    found.dedup_by(|a, b| a.1 == b.1);
    found.into_iter().take(3).map(|(_, c)| c).collect()
}

/// `; did you mean 'x'?` (or `'x' or 'y'`) for the candidates close to `word`, else nothing: the end of an error
/// message.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let found = close(word, candidates);
    if found.is_empty() {
        return String::new();
    }
    let quoted: Vec<String> = found.iter().map(|c| format!("'{c}'")).collect();
    format!("; did you mean {}?", quoted.join(" or "))
}

/// The names (and aliases) of the visible built-in commands.
fn builtin_names() -> Vec<String> {
    let root = super::command();
    root.get_subcommands()
        .filter(|c| !c.is_hide_set())
        .flat_map(|c| std::iter::once(c.get_name().to_string()).chain(c.get_all_aliases().map(str::to_string)))
        .collect()
}

/// When `word` (not a built-in command, so taken for a service) is a typo of a built-in command, the error to
/// report instead of asking the registry: `unknown command 'sevices'; did you mean 'services'?`. A service of
/// that very name in the schema cache is not a typo.
pub fn builtin_typo(settings: &Settings, word: &str) -> Option<CliError> {
    let names = builtin_names();
    let mut typo_of: Vec<&str> = names.iter().map(String::as_str).filter(|name| is_typo(word, name)).collect();
    if typo_of.is_empty() || settings.schema_cache().service(word).is_some() {
        return None;
    }
    typo_of.sort_by_key(|name| strsim::osa_distance(&word.to_lowercase(), name));
    let quoted: Vec<String> = typo_of.iter().take(3).map(|c| format!("'{c}'")).collect();
    Some(CliError::input(format!("unknown command '{word}'; did you mean {}?", quoted.join(" or "))))
}

/// The error for a word that is neither a built-in command nor a service in the registry: Micro's
/// `Unrecognized micro command`, or `unknown command 'helloword'; did you mean 'helloworld'?` when services (from
/// the registry, else the schema cache) have a close name. Bad input, exit 128.
pub async fn unknown_service(settings: &Settings, conn: &micro_client::Connection, word: &str) -> CliError {
    let mut names: Vec<String> = match conn.list_services().await {
        Ok(services) => services.into_iter().map(|s| s.name).collect(),
        Err(_) => settings.schema_cache().services().into_iter().map(|s| s.name).collect(),
    };
    names.sort();
    names.dedup();
    let hint = did_you_mean(word, names.iter().map(String::as_str));
    if hint.is_empty() {
        CliError::input(format!("Unrecognized micro command: {word}. Please refer to 'micro --help'"))
    } else {
        CliError::input(format!("unknown command '{word}'{hint}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_of_built_ins() {
        for (word, name) in [
            ("sevices", "services"),
            ("servcies", "services"),
            ("Services", "services"),
            ("stauts", "status"),
            ("confg", "config"),
            ("lgos", "logs"),
            ("evn", "env"),
            ("completoin", "completion"),
            ("stroe", "store"),
        ] {
            assert!(is_typo(word, name), "{word} is a typo of {name}");
        }
        for (word, name) in [
            ("helloworld", "health"),
            ("gen", "get"),
            ("net", "new"),
            ("echo", "env"),
            ("greeter", "get"),
            ("notes", "logs"),
            ("ab", "cli"),
            ("complete", "completion"),
        ] {
            assert!(!is_typo(word, name), "{word} is not a typo of {name}");
        }
    }

    #[test]
    fn every_sample_word_maps_to_at_most_the_intended_built_in() {
        let names = builtin_names();
        let typos = |w: &str| names.iter().filter(|n| is_typo(w, n)).cloned().collect::<Vec<_>>();
        assert_eq!(typos("sevices"), ["services"]);
        assert_eq!(typos("helloworld"), Vec::<String>::new());
        assert_eq!(typos("echo"), Vec::<String>::new());
        assert_eq!(typos("notes"), Vec::<String>::new());
    }

    #[test]
    fn suggestions() {
        let services = ["helloworld", "echo", "notes", "registry"];
        assert_eq!(did_you_mean("helloword", services), "; did you mean 'helloworld'?");
        assert_eq!(did_you_mean("ecoh", services), "; did you mean 'echo'?");
        assert_eq!(did_you_mean("zzz", services), "");
        assert_eq!(close("cal", ["call", "ping-pong", "stream"]), ["call"]);
        assert_eq!(close("--nme", ["--name", "--help"]), ["--name"]);
        assert_eq!(close("Helloworld.Cal", ["Helloworld.Call", "Helloworld.Stream"]), ["Helloworld.Call"]);
        assert!(close("Helloworld.Nope", ["Helloworld.Call", "Helloworld.Stream"]).is_empty());
        assert_eq!(close("--nmae", ["--name", "--output"]), ["--name"]);
        assert_eq!(close("registyr", ["registry", "runtime"]), ["registry"]);
    }
}
