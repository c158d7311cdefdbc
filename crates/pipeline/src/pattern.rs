//! Match patterns of AbnormalSource templates: regular expressions matched against the whole
//! value (anchored), where an empty pattern places no constraint.
//!
//! Kube Diagnoser matched unanchored, so `reason: Failed` also matched "FailedMount"; kdiag anchors
//! so a pattern says exactly what it matches. Write `.*disk.*` for a substring, or give the
//! source `matching: KubeDiagnoser` ([`Pattern::compile_anywhere`]).

use regex::Regex;

use crate::Error;

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern(Option<Regex>);

impl Pattern {
    /// Compiles `pattern`; `field` names it in the error.
    pub fn compile(field: &str, pattern: &str) -> Result<Self, Error> {
        Self::build(field, pattern, &format!("^(?:{pattern})$"))
    }

    /// Compiles `pattern` to match anywhere in the value, as Kube Diagnoser's `regexp.MatchString`
    /// did.
    pub fn compile_anywhere(field: &str, pattern: &str) -> Result<Self, Error> {
        Self::build(field, pattern, pattern)
    }

    fn build(field: &str, pattern: &str, regex: &str) -> Result<Self, Error> {
        if pattern.is_empty() {
            return Ok(Self(None));
        }
        Regex::new(regex)
            .map(|r| Self(Some(r)))
            .map_err(|e| Error::InvalidPattern {
                field: field.to_owned(),
                pattern: pattern.to_owned(),
                reason: first_line(&e.to_string()),
            })
    }

    pub fn matches(&self, value: &str) -> bool {
        self.0.as_ref().is_none_or(|r| r.is_match(value))
    }

    /// False for the empty pattern, which matches anything.
    pub fn constrains(&self) -> bool {
        self.0.is_some()
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_diagnoser_patterns_match_anywhere_in_the_value() {
        let p = Pattern::compile_anywhere("reason", "Failed").unwrap();
        assert!(p.matches("FailedMount"));
        assert!(p.matches("PodFailed"));
        assert!(!p.matches("Killing"));
        assert!(
            Pattern::compile_anywhere("reason", "^Failed$")
                .unwrap()
                .matches("Failed")
        );
        assert!(
            !Pattern::compile_anywhere("reason", "")
                .unwrap()
                .constrains()
        );
        assert!(Pattern::compile_anywhere("reason", "(").is_err());
    }

    #[test]
    fn patterns_match_the_whole_value() {
        let p = Pattern::compile("reason", "Failed").unwrap();
        assert!(p.matches("Failed"));
        assert!(!p.matches("FailedMount"));
        assert!(
            Pattern::compile("reason", "Failed.*")
                .unwrap()
                .matches("FailedMount")
        );
        assert!(
            Pattern::compile("reason", "BackOff|Unhealthy")
                .unwrap()
                .matches("Unhealthy")
        );
    }

    #[test]
    fn an_empty_pattern_places_no_constraint() {
        let p = Pattern::compile("message", "").unwrap();
        assert!(p.matches("anything") && !p.constrains());
    }

    #[test]
    fn an_invalid_pattern_names_its_field() {
        let e = Pattern::compile(
            "spec.sourceTemplate.kubernetesEventTemplate.regexp.reason",
            "Back(Off",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("spec.sourceTemplate.kubernetesEventTemplate.regexp.reason: \"Back(Off\" is not a valid regular expression"), "{e}");
    }
}
