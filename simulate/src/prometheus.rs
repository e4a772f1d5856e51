//! A strict parser of the Prometheus text format, for checking what the
//! processes' `/metrics` say (tests and operators' scripts alike).

use std::collections::BTreeMap;

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the text exposition format (version 0.0.4), refusing anything
/// malformed: every sample must belong to a family declared by `# TYPE`
/// (histograms through `_bucket`, `_sum` and `_count`), label values must
/// be quoted and properly escaped, values must be numbers.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| Err(format!("line {}: {why}: {line:?}", n + 1));
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
                return fail("bad TYPE");
            };
            if !valid_name(name)
                || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
            {
                return fail("bad TYPE");
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return fail("TYPE declared twice");
            }
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return fail("no value"),
        };
        if !valid_name(name) {
            return fail("bad metric name");
        }
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(inner) = rest.strip_prefix('{') {
            match parse_labels(inner) {
                Ok((parsed, after)) => {
                    labels = parsed;
                    rest = after;
                }
                Err(why) => return fail(&why),
            }
        }
        let mut fields = rest.split_whitespace();
        let value = match fields.next() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some("NaN") => f64::NAN,
            Some(v) => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => return fail("value is not a number"),
            },
            None => return fail("no value"),
        };
        if let Some(ts) = fields.next() {
            if ts.parse::<i64>().is_err() {
                return fail("bad timestamp");
            }
        }
        if fields.next().is_some() || !rest.starts_with(' ') {
            return fail("trailing garbage");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|base| {
                types
                    .get(*base)
                    .is_some_and(|t| t == "histogram" || t == "summary")
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return fail("sample without a TYPE");
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// Parses `name="value",...}` and returns the labels and what follows `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without =")?;
        let name = &s[..eq];
        if !valid_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let body = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("unquoted label value")?;
        let mut value = String::new();
        let mut escaped = false;
        let mut close = None;
        for (i, c) in body.char_indices() {
            match (escaped, c) {
                (true, 'n') => value.push('\n'),
                (true, '\\' | '"') => value.push(c),
                (true, _) => return Err("bad escape in label value".into()),
                (false, '\\') => {}
                (false, '"') => {
                    close = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
            escaped = !escaped && c == '\\';
        }
        let close = close.ok_or("unterminated label value")?;
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        s = &body[close + 1..];
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels not separated by commas".into());
        }
    }
}

/// The samples of `url/metrics`, checked for content type and syntax.
pub async fn scrape(url: &str) -> Result<Vec<Sample>, String> {
    let response = reqwest::get(format!("{url}/metrics"))
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("/metrics answered {}", response.status()));
    }
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    if !content_type.starts_with("text/plain") {
        return Err(format!("content type {content_type}"));
    }
    parse_prometheus(&response.text().await.map_err(|e| e.to_string())?)
}

/// The value of the sample `name` whose labels include `labels`. An absent
/// sample is an error, never 0: a metric that was renamed or never
/// recorded must not pass a check that expects 0.
pub fn try_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.value),
        [] => Err(format!("no sample {name} {labels:?} in /metrics")),
        _ => Err(format!("{name} {labels:?} is ambiguous: {matching:?}")),
    }
}

/// [`try_value`] for tests: panics when the sample is absent or ambiguous.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    try_value(samples, name, labels).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_sample_is_an_error_not_zero() {
        let samples =
            parse_prometheus("# TYPE a_total counter\na_total{k=\"x\"} 0\na_total{k=\"y\"} 2\n")
                .unwrap();
        assert_eq!(try_value(&samples, "a_total", &[("k", "x")]), Ok(0.0));
        assert_eq!(try_value(&samples, "a_total", &[("k", "y")]), Ok(2.0));
        assert!(try_value(&samples, "b_total", &[]).is_err());
        assert!(try_value(&samples, "a_total", &[("k", "z")]).is_err());
        assert!(try_value(&samples, "a_total", &[])
            .unwrap_err()
            .contains("ambiguous"));
    }
}
