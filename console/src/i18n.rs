//! Labels from the Fluent catalogues in `i18n/` (embedded), the language of a request, and numbers
//! formatted for it. Dates are formatted in the browser (its time zone) by `assets/app.js`.

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};
use std::sync::OnceLock;
use unic_langid::{langid, LanguageIdentifier};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Sr,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Sr];

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Sr => "sr",
        }
    }

    /// The BCP 47 tag the browser formats dates with (Serbian in Latin script).
    pub fn html_tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Sr => "sr-Latn",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        let code = code.trim().to_ascii_lowercase();
        let primary = code.split(['-', '_']).next().unwrap_or("");
        match primary {
            "en" => Some(Lang::En),
            // Serbian and its neighbours' Latin-script languages read it; Cyrillic is not offered
            "sr" | "hr" | "bs" | "sh" | "cnr" => Some(Lang::Sr),
            _ => None,
        }
    }

    /// The best of our languages for an Accept-Language header (by q-value, then order).
    pub fn from_accept_language(header: &str) -> Option<Lang> {
        let mut best: Option<(f32, usize, Lang)> = None;
        for (i, part) in header.split(',').enumerate() {
            let mut pieces = part.split(';');
            let tag = pieces.next().unwrap_or("").trim();
            let q = pieces
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|v| v.parse::<f32>().ok())
                })
                .unwrap_or(1.0);
            if q <= 0.0 {
                continue;
            }
            if let Some(lang) = Lang::parse(tag) {
                let better = match best {
                    None => true,
                    Some((bq, bi, _)) => q > bq || (q == bq && i < bi),
                };
                if better {
                    best = Some((q, i, lang));
                }
            }
        }
        best.map(|(_, _, l)| l)
    }

    fn bundle(self) -> &'static FluentBundle<FluentResource> {
        static EN: OnceLock<FluentBundle<FluentResource>> = OnceLock::new();
        static SR: OnceLock<FluentBundle<FluentResource>> = OnceLock::new();
        match self {
            Lang::En => EN.get_or_init(|| build(langid!("en"), include_str!("../i18n/en.ftl"))),
            Lang::Sr => {
                SR.get_or_init(|| build(langid!("sr-Latn"), include_str!("../i18n/sr.ftl")))
            }
        }
    }

    /// The label `id`; a missing one shows as its id (and fails the catalogue test).
    pub fn t(self, id: &str) -> String {
        self.fmt(id, None)
    }

    /// The label `id` with arguments.
    pub fn ta(self, id: &str, args: &[(&str, FluentValue<'_>)]) -> String {
        let mut fa = FluentArgs::new();
        for (k, v) in args {
            fa.set(*k, v.clone());
        }
        self.fmt(id, Some(&fa))
    }

    fn fmt(self, id: &str, args: Option<&FluentArgs>) -> String {
        let bundle = self.bundle();
        let Some(pattern) = bundle.get_message(id).and_then(|m| m.value()) else {
            return id.to_string();
        };
        let mut errors = vec![];
        bundle
            .format_pattern(pattern, args, &mut errors)
            .into_owned()
    }

    /// An integer with the language's digit grouping: 12,345 (en), 12.345 (sr).
    pub fn num(self, n: i64) -> String {
        let sep = match self {
            Lang::En => ',',
            Lang::Sr => '.',
        };
        let digits = n.unsigned_abs().to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
        if n < 0 {
            out.push('-');
        }
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(sep);
            }
            out.push(c);
        }
        out
    }

    /// A message about `n` things: `count` selects the language's plural form (Serbian has three),
    /// `shown` is `n` with the language's digit grouping.
    pub fn count(self, id: &str, n: i64) -> String {
        self.ta(id, &[("count", n.into()), ("shown", self.num(n).into())])
    }

    /// A number with one decimal and the language's decimal mark: 1.5 (en), 1,5 (sr).
    pub fn decimal(self, v: f64) -> String {
        let v = format!("{v:.1}");
        match self {
            Lang::En => v,
            Lang::Sr => v.replace('.', ","),
        }
    }

    /// A duration in milliseconds with one decimal, the language's decimal mark.
    pub fn ms(self, v: f64) -> String {
        self.ta("milliseconds", &[("n", FluentValue::from(self.decimal(v)))])
    }

    /// A duration in seconds with one decimal, the language's decimal mark.
    pub fn secs(self, s: f64) -> String {
        self.ta("seconds", &[("n", FluentValue::from(self.decimal(s)))])
    }
}

fn build(id: LanguageIdentifier, source: &'static str) -> FluentBundle<FluentResource> {
    let resource =
        FluentResource::try_new(source.to_string()).expect("the embedded catalogue parses");
    let mut bundle = FluentBundle::new_concurrent(vec![id]);
    // the labels go into HTML, where bidi isolation marks would only get in the way of the text
    bundle.set_use_isolating(false);
    bundle
        .add_resource(resource)
        .expect("no duplicate message in the embedded catalogue");
    bundle
}

/// Every message id of a catalogue (for the tests).
#[cfg(test)]
pub fn message_ids(source: &str) -> Vec<String> {
    source
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(' '))
        .filter_map(|l| l.split_once(" =").map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_catalogues_have_the_same_messages_and_each_formats() {
        let en = message_ids(include_str!("../i18n/en.ftl"));
        let sr = message_ids(include_str!("../i18n/sr.ftl"));
        assert_eq!(
            en, sr,
            "en.ftl and sr.ftl must define the same ids in the same order"
        );
        assert!(en.len() > 100);
        for id in &en {
            for lang in Lang::ALL {
                let text = lang.ta(
                    id,
                    &[
                        ("count", 3.into()),
                        ("role", "x".into()),
                        ("id", "x".into()),
                        ("detail", "x".into()),
                        ("n", "1".into()),
                        ("shown", "3".into()),
                        ("what", "x".into()),
                        ("value", "x".into()),
                        ("length", "x".into()),
                        ("max", "x".into()),
                        ("from", "x".into()),
                        ("to", "x".into()),
                        ("first", "x".into()),
                        ("second", "x".into()),
                    ],
                );
                assert!(lang.bundle().has_message(id), "{id} missing in {lang:?}");
                assert!(!text.is_empty(), "{id} is empty in {lang:?}");
                assert!(
                    !text.contains('{'),
                    "{id} in {lang:?} left a placeable: {text}"
                );
            }
        }
    }

    /// "Re-armed 1 deliveries." no more: each language's plural forms (Serbian's three).
    #[test]
    fn counts_take_the_plural_form_of_their_language() {
        assert_eq!(Lang::En.count("retried", 1), "Re-armed 1 delivery.");
        assert_eq!(
            Lang::En.count("retried", 1234),
            "Re-armed 1,234 deliveries."
        );
        assert_eq!(
            Lang::Sr.count("retried", 1),
            "Ponovo je pokrenuta 1 isporuka."
        );
        assert_eq!(
            Lang::Sr.count("retried", 21),
            "Ponovo je pokrenuta 21 isporuka."
        );
        assert_eq!(
            Lang::Sr.count("retried", 3),
            "Ponovo su pokrenute 3 isporuke."
        );
        assert_eq!(
            Lang::Sr.count("retried", 12),
            "Ponovo je pokrenuto 12 isporuka."
        );
        assert_eq!(
            Lang::Sr.count("retried", 5),
            "Ponovo je pokrenuto 5 isporuka."
        );
        assert_eq!(Lang::Sr.ms(1.05), "1,1 ms");
        assert_eq!(Lang::En.ms(1.05), "1.1 ms");
    }

    #[test]
    fn accept_language_picks_by_quality() {
        assert_eq!(
            Lang::from_accept_language("sr-Latn-RS,sr;q=0.9,en;q=0.8"),
            Some(Lang::Sr)
        );
        assert_eq!(
            Lang::from_accept_language("de-DE,en;q=0.5,sr;q=0.4"),
            Some(Lang::En)
        );
        assert_eq!(
            Lang::from_accept_language("en;q=0.2, hr;q=0.9"),
            Some(Lang::Sr)
        );
        assert_eq!(Lang::from_accept_language("de, fr"), None);
        assert_eq!(Lang::from_accept_language("sr;q=0, en"), Some(Lang::En));
        assert_eq!(Lang::from_accept_language(""), None);
    }

    #[test]
    fn numbers_are_grouped_per_language() {
        assert_eq!(Lang::En.num(1234567), "1,234,567");
        assert_eq!(Lang::Sr.num(1234567), "1.234.567");
        assert_eq!(Lang::En.num(999), "999");
        assert_eq!(Lang::En.num(-1000), "-1,000");
        assert_eq!(Lang::Sr.secs(2.26), "2,3 s");
    }
}
