//! What a session may ask of the cluster for its runner, and the operator's bounds on it: one
//! rule, checked by the api at the edge (422 naming the field, nothing published), by the
//! reconciler when it applies a command (a failed result, 422) and again by the session
//! controller before it creates a runner Job (phase `Error`), so a session written straight to
//! the cluster, or one accepted before the bounds tightened, cannot get past it either.
//!
//! - `resourceOverrides.cpu` / `.memory` are Kubernetes quantities (parsed here exactly as the
//!   API server parses them), more than zero and at most the operator's maxima; the runner
//!   container gets each as both its request and its limit.
//! - `resourceOverrides.priorityClass` must be on the operator's allow-list, empty by default:
//!   runner pods then carry no `priorityClassName` and get the cluster's default priority.
//! - `environmentVariables` may not name a variable the platform sets itself
//!   ([`RUNNER_PLATFORM_ENV`]); a key of the project's runner Secret always wins over a
//!   session variable of the same name (see the reconciler's README, "Runner contract").
//!
//! An empty string in any of the three overrides means "not set", as the existing UI sends it.

use std::collections::BTreeMap;
use std::fmt;

use super::{AgenticSessionSpec, ResourceOverrides};
use crate::names::ValidationError;

/// Why a string is not an acceptable quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the form `<number><suffix>` (e.g. `500m`, `2`, `1.5Gi`, `1e3`).
    #[error("is not a Kubernetes quantity (e.g. 500m, 2, 1.5Gi)")]
    Syntax,
    /// Below zero.
    #[error("must not be negative")]
    Negative,
    /// Zero where more is needed.
    #[error("must be more than 0")]
    Zero,
    /// Beyond anything this parser represents (far beyond any bound).
    #[error("is too large")]
    TooLarge,
}

const NANO: u128 = 1_000_000_000;

/// A non-negative Kubernetes quantity, exactly, in billionths of its unit (cores, bytes, pods).
/// Precision below that is rounded up, as the API server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u128);

enum Scale {
    /// × 10^n.
    Decimal(i64),
    /// × 2^n.
    Binary(u32),
}

impl Amount {
    /// Parses the canonical quantity grammar of Kubernetes (`k8s.io/apimachinery`
    /// `resource.ParseQuantity`): an optionally signed decimal number (`1`, `1.5`, `.5`, `5.`)
    /// followed by a binary suffix (`Ki` … `Ei`), a decimal suffix (`n`, `u`, `m`, ``, `k`, `M`,
    /// `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`). Nothing else: no spaces.
    pub fn parse(s: &str) -> Result<Amount, QuantityError> {
        use QuantityError::*;
        let b = s.as_bytes();
        let mut i = 0;
        let negative = match b.first() {
            Some(b'-') => {
                i = 1;
                true
            }
            Some(b'+') => {
                i = 1;
                false
            }
            _ => false,
        };
        let int_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = &s[int_start..i];
        let mut frac_digits = "";
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = &s[start..i];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(Syntax);
        }
        let suffix = &s[i..];
        let scale = match suffix {
            "" => Scale::Decimal(0),
            "n" => Scale::Decimal(-9),
            "u" => Scale::Decimal(-6),
            "m" => Scale::Decimal(-3),
            "k" => Scale::Decimal(3),
            "M" => Scale::Decimal(6),
            "G" => Scale::Decimal(9),
            "T" => Scale::Decimal(12),
            "P" => Scale::Decimal(15),
            "E" => Scale::Decimal(18),
            "Ki" => Scale::Binary(10),
            "Mi" => Scale::Binary(20),
            "Gi" => Scale::Binary(30),
            "Ti" => Scale::Binary(40),
            "Pi" => Scale::Binary(50),
            "Ei" => Scale::Binary(60),
            e if e.len() > 1 && (e.starts_with('e') || e.starts_with('E')) => {
                let digits = e[1..].strip_prefix(['+', '-']).unwrap_or(&e[1..]);
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(Syntax);
                }
                // As the API server: a 32-bit exponent.
                Scale::Decimal(e[1..].parse::<i32>().map_err(|_| Syntax)? as i64)
            }
            _ => return Err(Syntax),
        };
        // The digits as one integer, scaled by 10^-(fraction digits).
        let mut n: u128 = 0;
        for d in int_digits.bytes().chain(frac_digits.bytes()) {
            n = n.checked_mul(10).and_then(|n| n.checked_add(u128::from(d - b'0'))).ok_or(TooLarge)?;
        }
        let frac = frac_digits.len() as i64;
        let nanos = match scale {
            Scale::Decimal(e) => scale10(n, e + 9 - frac)?,
            Scale::Binary(p) => scale10(n.checked_mul(1u128 << p).ok_or(TooLarge)?, 9 - frac)?,
        };
        if negative && nanos > 0 {
            return Err(Negative);
        }
        Ok(Amount(nanos))
    }

    /// [`Amount::parse`], refusing zero.
    pub fn parse_positive(s: &str) -> Result<Amount, QuantityError> {
        match Amount::parse(s)? {
            Amount(0) => Err(QuantityError::Zero),
            a => Ok(a),
        }
    }

    /// The amount in billionths of its unit.
    pub fn nanos(self) -> u128 {
        self.0
    }

    /// As a CPU quantity: whole cores (`2`) or millicores (`1500m`), rounded up to 1m as the
    /// API server does.
    pub fn cpu_string(self) -> String {
        let milli = self.0.div_ceil(NANO / 1000);
        if milli.is_multiple_of(1000) { format!("{}", milli / 1000) } else { format!("{milli}m") }
    }

    /// As a memory quantity: bytes, rounded up, in the largest binary unit that divides them
    /// (`1Gi`, `1536Mi`, `1000`).
    pub fn memory_string(self) -> String {
        let bytes = self.0.div_ceil(NANO);
        for (suffix, shift) in [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if bytes != 0 && bytes.is_multiple_of(1u128 << shift) {
                return format!("{}{suffix}", bytes >> shift);
            }
        }
        bytes.to_string()
    }
}

/// `n × 10^e`, rounded up when `e < 0`.
fn scale10(n: u128, e: i64) -> Result<u128, QuantityError> {
    if n == 0 {
        return Ok(0);
    }
    let pow = |k: i64| u32::try_from(k).ok().and_then(|k| 10u128.checked_pow(k));
    if e >= 0 {
        pow(e).and_then(|p| n.checked_mul(p)).ok_or(QuantityError::TooLarge)
    } else {
        // Beyond u128, the quotient is below one: rounds up to one.
        Ok(pow(-e).map_or(1, |p| n.div_ceil(p)))
    }
}

/// Environment variables the platform sets on every runner (reconciler/README.md, "Runner
/// contract"); a session may not set them.
pub const RUNNER_PLATFORM_ENV: &[&str] = &[
    "AGENTIC_SESSION_NAME",
    "AGENTIC_SESSION_NAMESPACE",
    "PROMPT",
    "LLM_MODEL",
    "LLM_TEMPERATURE",
    "LLM_MAX_TOKENS",
    "TIMEOUT",
    "BACKEND_API_URL",
    "INTERACTIVE",
    "HOME",
    "USER_ID",
    "USER_NAME",
    "REPOS_JSON",
    "MAIN_REPO_INDEX",
];

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 253 characters.
pub fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes().enumerate().all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()))
}

/// Checks a session's `environmentVariables`: valid names, none the platform sets itself.
pub fn check_environment(env: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    for k in env.keys() {
        let field = || format!("environmentVariables.{k}");
        if !is_env_name(k) {
            return Err(ValidationError::new(field(), "names must match [A-Za-z_][A-Za-z0-9_]*"));
        }
        if RUNNER_PLATFORM_ENV.contains(&k.as_str()) {
            return Err(ValidationError::new(field(), format!("{k} is set by the platform and cannot be overridden")));
        }
    }
    Ok(())
}

fn default_max_cpu() -> Amount {
    Amount(4 * NANO)
}

fn default_max_memory() -> Amount {
    Amount((8u128 << 30) * NANO)
}

/// The operator's bounds on runner pods. The api and the reconciler both take these flags
/// (same names, same defaults); the reconciler's are the ones that decide, so a mismatch only
/// ever makes the stricter of the two win.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RunnerBounds {
    /// Most CPU a session may ask for its runner (`resourceOverrides.cpu`, request and limit),
    /// a Kubernetes quantity.
    #[cfg_attr(feature = "cli", arg(long = "runner-max-cpu", env = "RUNNER_MAX_CPU", default_value = "4", value_parser = Amount::parse_positive))]
    pub max_cpu: Amount,
    /// Most memory a session may ask for its runner (`resourceOverrides.memory`, request and
    /// limit), a Kubernetes quantity.
    #[cfg_attr(feature = "cli", arg(long = "runner-max-memory", env = "RUNNER_MAX_MEMORY", default_value = "8Gi", value_parser = Amount::parse_positive))]
    pub max_memory: Amount,
    /// PriorityClasses a session may ask for (`resourceOverrides.priorityClass`),
    /// comma-separated. None by default: every request is refused and runner pods get the
    /// cluster's default priority.
    #[cfg_attr(
        feature = "cli",
        arg(long = "runner-priority-classes", env = "RUNNER_PRIORITY_CLASSES", value_delimiter = ',')
    )]
    pub priority_classes: Vec<String>,
}

impl Default for RunnerBounds {
    fn default() -> Self {
        RunnerBounds { max_cpu: default_max_cpu(), max_memory: default_max_memory(), priority_classes: Vec::new() }
    }
}

impl RunnerBounds {
    fn allows_priority_class(&self, name: &str) -> bool {
        !name.is_empty() && self.priority_classes.iter().any(|p| p == name)
    }
}

/// What a session's runner pod gets, once its spec passed [`AgenticSessionSpec::check_runner`]:
/// only a value of this type reaches a pod spec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunnerResources {
    /// CPU request and limit.
    pub cpu: Option<Amount>,
    /// Memory request and limit.
    pub memory: Option<Amount>,
    /// `priorityClassName`, one on the operator's allow-list.
    pub priority_class: Option<String>,
}

impl fmt::Display for RunnerResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {}, memory {}, priorityClass {}",
            self.cpu.map_or("default".into(), Amount::cpu_string),
            self.memory.map_or("default".into(), Amount::memory_string),
            self.priority_class.as_deref().unwrap_or("default")
        )
    }
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl ResourceOverrides {
    /// The overrides as the runner pod gets them, if within `bounds`; otherwise the field
    /// (`resourceOverrides.cpu`, `.memory`, `.priorityClass`) and the rule it broke.
    pub fn validate(&self, bounds: &RunnerBounds) -> Result<RunnerResources, ValidationError> {
        let quantity = |name: &str,
                        v: &Option<String>,
                        max: Amount,
                        show: fn(Amount) -> String|
         -> Result<Option<Amount>, ValidationError> {
            let field = format!("resourceOverrides.{name}");
            let Some(v) = set(v) else { return Ok(None) };
            let a = Amount::parse_positive(v).map_err(|e| ValidationError::new(&field, format!("{v:?} {e}")))?;
            if a > max {
                return Err(ValidationError::new(
                    &field,
                    format!("{v:?} is more than the most a runner may have ({})", show(max)),
                ));
            }
            Ok(Some(a))
        };
        let cpu = quantity("cpu", &self.cpu, bounds.max_cpu, Amount::cpu_string)?;
        let memory = quantity("memory", &self.memory, bounds.max_memory, Amount::memory_string)?;
        let priority_class = match set(&self.priority_class) {
            None => None,
            Some(p) if bounds.allows_priority_class(p) => Some(p.to_string()),
            Some(p) => {
                let allowed: Vec<&str> =
                    bounds.priority_classes.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
                let allowed = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                return Err(ValidationError::new(
                    "resourceOverrides.priorityClass",
                    format!("priority class {p:?} is not allowed (allowed: {allowed})"),
                ));
            }
        };
        Ok(RunnerResources { cpu, memory, priority_class })
    }
}

impl AgenticSessionSpec {
    /// What this session's runner may get under `bounds`: its resource overrides checked and
    /// parsed, its environment free of platform names; or the first field that is not.
    pub fn check_runner(&self, bounds: &RunnerBounds) -> Result<RunnerResources, ValidationError> {
        check_environment(&self.environment_variables)?;
        match &self.resource_overrides {
            Some(r) => r.validate(bounds),
            None => Ok(RunnerResources::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u128 = 1 << 30;

    #[test]
    fn quantities_parse_as_the_api_server_parses_them() {
        let n = |s: &str| Amount::parse(s).map(Amount::nanos);
        for (s, want) in [
            ("1", NANO),
            ("0", 0),
            ("+2", 2 * NANO),
            ("-0", 0),
            ("500m", NANO / 2),
            ("0.5", NANO / 2),
            (".5", NANO / 2),
            ("5.", 5 * NANO),
            ("1.5", 3 * NANO / 2),
            ("100n", 100),
            ("3u", 3_000),
            ("1k", 1_000 * NANO),
            ("1M", 1_000_000 * NANO),
            ("2G", 2_000_000_000 * NANO),
            ("1T", 1_000_000_000_000 * NANO),
            ("1P", 10u128.pow(15) * NANO),
            ("1E", 10u128.pow(18) * NANO),
            ("1Ki", 1024 * NANO),
            ("1Mi", (1 << 20) * NANO),
            ("1Gi", GI * NANO),
            ("1.5Gi", 3 * GI / 2 * NANO),
            ("8Gi", 8 * GI * NANO),
            ("1Ti", (1 << 40) * NANO),
            ("1Pi", (1 << 50) * NANO),
            ("1Ei", (1 << 60) * NANO),
            ("1e3", 1_000 * NANO),
            ("1E3", 1_000 * NANO),
            ("1e+3", 1_000 * NANO),
            ("25e-1", 5 * NANO / 2),
            ("1000", 1_000 * NANO),
            ("0001", NANO),
            // Below a billionth: rounded up, never down.
            ("1e-12", 1),
            ("0.0000000001", 1),
            ("1e-2147483648", 1),
        ] {
            assert_eq!(n(s), Ok(want), "{s}");
        }
        for (s, want) in [
            ("", QuantityError::Syntax),
            (".", QuantityError::Syntax),
            ("m", QuantityError::Syntax),
            ("1 ", QuantityError::Syntax),
            (" 1", QuantityError::Syntax),
            ("1 Gi", QuantityError::Syntax),
            ("1gi", QuantityError::Syntax),
            ("1KI", QuantityError::Syntax),
            ("1K", QuantityError::Syntax),
            ("1mi", QuantityError::Syntax),
            ("1e", QuantityError::Syntax),
            ("1e1.5", QuantityError::Syntax),
            ("1e+", QuantityError::Syntax),
            ("1e 3", QuantityError::Syntax),
            ("1e99999999999", QuantityError::Syntax),
            ("1.2.3", QuantityError::Syntax),
            ("--1", QuantityError::Syntax),
            ("0x10", QuantityError::Syntax),
            ("1,5", QuantityError::Syntax),
            ("NaN", QuantityError::Syntax),
            ("∞", QuantityError::Syntax),
            ("1Gi\u{0}", QuantityError::Syntax),
            ("-1", QuantityError::Negative),
            ("-500m", QuantityError::Negative),
            ("1e40", QuantityError::TooLarge),
            ("1e2147483647", QuantityError::TooLarge),
            ("99999999999999999999999999999999999999999", QuantityError::TooLarge),
            ("999999999999999999999Ei", QuantityError::TooLarge),
        ] {
            assert_eq!(Amount::parse(s), Err(want), "{s:?}");
        }
        assert_eq!(Amount::parse_positive("0"), Err(QuantityError::Zero));
        assert_eq!(Amount::parse_positive("0Gi"), Err(QuantityError::Zero));
    }

    #[test]
    fn quantities_render_canonically() {
        let cpu = |s: &str| Amount::parse(s).unwrap().cpu_string();
        let mem = |s: &str| Amount::parse(s).unwrap().memory_string();
        assert_eq!(cpu("2"), "2");
        assert_eq!(cpu("2000m"), "2");
        assert_eq!(cpu("1.5"), "1500m");
        assert_eq!(cpu("100n"), "1m");
        assert_eq!(cpu("250m"), "250m");
        assert_eq!(mem("1Gi"), "1Gi");
        assert_eq!(mem("1.5Gi"), "1536Mi");
        assert_eq!(mem("1G"), "1000000000");
        assert_eq!(mem("1024"), "1Ki");
        assert_eq!(mem("0.5"), "1");
        // Rendering then parsing gives back at least the amount (never less).
        for s in ["1", "1.5", "333m", "1e-3", "7n"] {
            assert!(Amount::parse(&cpu(s)).unwrap() >= Amount::parse(s).unwrap(), "{s}");
        }
    }

    fn overrides(cpu: &str, memory: &str, pc: &str) -> ResourceOverrides {
        let o = |s: &str| (!s.is_empty()).then(|| s.to_string());
        ResourceOverrides { cpu: o(cpu), memory: o(memory), priority_class: o(pc) }
    }

    #[test]
    fn overrides_within_the_bounds_and_only_those() {
        let bounds = RunnerBounds { priority_classes: vec!["runner-high".into()], ..RunnerBounds::default() };
        let ok = overrides("500m", "1Gi", "runner-high").validate(&bounds).unwrap();
        assert_eq!(ok.cpu.map(Amount::cpu_string).as_deref(), Some("500m"));
        assert_eq!(ok.memory.map(Amount::memory_string).as_deref(), Some("1Gi"));
        assert_eq!(ok.priority_class.as_deref(), Some("runner-high"));
        // At the bound exactly, in any spelling.
        for (cpu, mem) in [("4", "8Gi"), ("4000m", "8192Mi"), ("4e0", "8589934592")] {
            assert!(overrides(cpu, mem, "").validate(&bounds).is_ok(), "{cpu} {mem}");
        }
        // Empty strings are "not set" (the existing UI sends them).
        assert_eq!(overrides("", "", "").validate(&bounds), Ok(RunnerResources::default()));
        assert_eq!(
            ResourceOverrides { cpu: Some(String::new()), ..Default::default() }.validate(&bounds),
            Ok(RunnerResources::default())
        );
        for (o, field, says) in [
            (overrides("1000", "", ""), "resourceOverrides.cpu", "most a runner may have (4)"),
            (overrides("4001m", "", ""), "resourceOverrides.cpu", "most"),
            (overrides("1e1", "", ""), "resourceOverrides.cpu", "most"),
            (overrides("abc", "", ""), "resourceOverrides.cpu", "not a Kubernetes quantity"),
            (overrides("-1", "", ""), "resourceOverrides.cpu", "negative"),
            (overrides("0", "", ""), "resourceOverrides.cpu", "more than 0"),
            (overrides("", "8.1Gi", ""), "resourceOverrides.memory", "most a runner may have (8Gi)"),
            (overrides("", "1Ti", ""), "resourceOverrides.memory", "most"),
            (overrides("", "1Pi", ""), "resourceOverrides.memory", "most"),
            (overrides("", "9G", ""), "resourceOverrides.memory", "most"),
            (overrides("", "8Gb", ""), "resourceOverrides.memory", "not a Kubernetes quantity"),
            (overrides("", "", "system-node-critical"), "resourceOverrides.priorityClass", "allowed: runner-high"),
            (overrides("", "", "system-cluster-critical"), "resourceOverrides.priorityClass", "not allowed"),
            (overrides("", "", "Runner-High"), "resourceOverrides.priorityClass", "not allowed"),
        ] {
            let e = o.validate(&bounds).unwrap_err();
            assert_eq!(e.field, field, "{o:?}");
            assert!(e.rule.contains(says), "{o:?}: {}", e.rule);
        }
        // The default allow-list is empty: every priority class is refused.
        let e = overrides("", "", "runner-high").validate(&RunnerBounds::default()).unwrap_err();
        assert_eq!(e.field, "resourceOverrides.priorityClass");
        assert!(e.rule.contains("allowed: none"), "{}", e.rule);
        // An empty entry in the list (e.g. RUNNER_PRIORITY_CLASSES="") allows nothing.
        let empty = RunnerBounds { priority_classes: vec![String::new()], ..RunnerBounds::default() };
        assert!(overrides("", "", "").validate(&empty).is_ok());
        assert!(ResourceOverrides { priority_class: Some(" ".into()), ..Default::default() }.validate(&empty).is_err());
    }

    #[test]
    fn platform_variables_cannot_be_set_by_a_session() {
        let env = |k: &str| BTreeMap::from([(k.to_string(), "x".to_string())]);
        assert!(check_environment(&env("ANTHROPIC_API_KEY")).is_ok());
        assert!(check_environment(&env("KWOK_RUN_DURATION")).is_ok());
        for k in RUNNER_PLATFORM_ENV {
            let e = check_environment(&env(k)).unwrap_err();
            assert_eq!(e.field, format!("environmentVariables.{k}"));
        }
        for bad in ["1X", "A-B", "", "A B", "É"] {
            assert!(check_environment(&env(bad)).is_err(), "{bad:?}");
        }
        let spec: AgenticSessionSpec = serde_json::from_value(serde_json::json!({
            "prompt": "p", "environmentVariables": {"BACKEND_API_URL": "http://evil"},
            "resourceOverrides": {"cpu": "1"}
        }))
        .unwrap();
        assert_eq!(
            spec.check_runner(&RunnerBounds::default()).unwrap_err().field,
            "environmentVariables.BACKEND_API_URL"
        );
    }
}
