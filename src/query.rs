//! A URL's query string, decoded once: values are UTF-8, and a name may
//! appear once (a repeated name is ambiguous, so it is refused).

use std::collections::HashMap;

use crate::error::Error;

/// A decoded query string.
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Query, Error> {
        let mut pairs = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode_component(name)?;
            let value = decode_component(value)?;
            if pairs.insert(name.clone(), value).is_some() {
                return Err(Error::bad_request(format!(
                    "query parameter {name} is given twice"
                )));
            }
        }
        Ok(Query(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn integer(&self, name: &str) -> Result<Option<u64>, Error> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    Error::bad_request(format!("{name} must be a non-negative integer"))
                })
            })
            .transpose()
    }
}

fn decode_component(raw: &str) -> Result<String, Error> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::bad_request("the query string is not valid UTF-8 once decoded"))
}

/// A path segment, percent-decoded (a `+` stays a `+`).
pub fn path_segment(raw: &str) -> Result<String, Error> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::bad_request("the path is not valid UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decodes_percent_and_plus() {
        let q = Query::parse(Some("user=Zo%C3%AB+K&room=general&since=4")).unwrap();
        assert_eq!(q.get("user"), Some("Zoë K"));
        assert_eq!(q.integer("since").unwrap(), Some(4));
    }

    #[test]
    fn path_segments_keep_their_plus() {
        assert_eq!(path_segment("%F0%9F%91%8D").unwrap(), "👍");
        assert_eq!(path_segment("+1").unwrap(), "+1");
        assert!(path_segment("%FF").is_err());
    }

    #[test]
    fn query_refuses_bad_utf8_repeats_and_bad_numbers() {
        assert!(Query::parse(Some("user=%FF")).is_err());
        assert!(Query::parse(Some("a=1&a=2")).is_err());
        let q = Query::parse(Some("since=-1&limit=99999999999999999999999")).unwrap();
        assert!(q.integer("since").is_err());
        assert!(q.integer("limit").is_err());
    }
}
