//! Log output: one JSON object a line for machines (femme's ndjson), or
//! readable lines for a person at a terminal.
//!
//! femme picks its format from the build (pretty in debug builds, ndjson in
//! release builds), not from where the output goes, so parlor uses femme for
//! JSON and writes the readable form itself: `make run` is a release build,
//! and someone watching it in a terminal should not have to read JSON.

use std::io::{IsTerminal, Write};

use log::kv::{Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

use crate::config::LogFormat;

pub fn start(level: LevelFilter, format: LogFormat) {
    let text = match format {
        LogFormat::Text => true,
        LogFormat::Json => false,
        LogFormat::Auto => std::io::stdout().is_terminal(),
    };
    if text {
        if log::set_boxed_logger(Box::new(TextLogger)).is_ok() {
            log::set_max_level(level);
        }
    } else {
        femme::with_level(level);
    }
}

/// `HH:MM:SS.mmm LEVEL message key=value …`, to stdout like femme.
struct TextLogger;

impl Log for TextLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let millis = crate::log::now_millis();
        let day = millis % 86_400_000;
        let mut line = format!(
            "{:02}:{:02}:{:02}.{:03} {:5} {}",
            day / 3_600_000,
            day / 60_000 % 60,
            day / 1000 % 60,
            day % 1000,
            record.level(),
            record.args()
        );
        struct Pairs<'a>(&'a mut String);
        impl<'kvs> VisitSource<'kvs> for Pairs<'_> {
            fn visit_pair(
                &mut self,
                key: Key<'kvs>,
                value: Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push_str(&format!(" {key}={value}"));
                Ok(())
            }
        }
        let _ = record.key_values().visit(&mut Pairs(&mut line));
        line.push('\n');
        // A closed stdout must not take the server down with it.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}
