//! The pages' frame: the document around every page, the one stylesheet, and how text from a
//! webhook is shown (escaped by maud; control and bidirectional-override characters made
//! visible, and isolated, so a hostile SMS cannot reorder what is around it).

use maud::{DOCTYPE, Markup, html};

use super::{Body, Response};

/// The console's only stylesheet, served as `/console.css` (the CSP allows no inline style).
const STYLESHEET: &str = include_str!("console.css");

/// The navigation: (path, label).
const NAV: [(&str, &str); 5] = [
    ("/", "Dashboard"),
    ("/calls", "Calls"),
    ("/sms", "SMS"),
    ("/quarantine", "Quarantine"),
    ("/alerts", "Alerts"),
];

/// A whole page: title, navigation (the current page marked) and content.
pub fn document(title: &str, current: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · didgate" }
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    span.brand { "didgate" }
                    nav {
                        @for (path, label) in NAV {
                            @if path == current {
                                a href=(path) aria-current="page" { (label) }
                            } @else {
                                a href=(path) { (label) }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// A page that only says something (not found, bad parameter, store error).
pub fn message(title: &str, text: &str) -> Markup {
    document(title, "", html! { p { (text) } })
}

/// `/console.css`.
pub fn stylesheet() -> Response {
    Response {
        status: 200,
        reason: "OK",
        content_type: "text/css; charset=utf-8",
        headers: String::new(),
        body: Body::Bytes(STYLESHEET.as_bytes().to_vec()),
    }
}

/// Text from a webhook, as shown: control characters (but newlines and tabs) and
/// bidirectional controls become U+FFFD, so they show instead of acting. maud escapes the
/// rest; callers put it inside `bdi`, so its direction does not leak into the page.
pub fn untrusted(s: &str) -> String {
    s.chars()
        .map(|c| {
            let acts = c.is_control() && c != '\n' && c != '\t';
            if acts || crate::untrusted::is_direction_control(c) {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// Seconds as m:ss (h:mm:ss from an hour).
pub fn duration(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{}:{:02}", secs / 60, secs % 60)
    }
}

/// A percentage with one decimal, or `–` when there is nothing to divide.
pub fn percent(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_string(), |p| format!("{p:.1}%"))
}

/// How long ago `ms` was, from `now_ms`, in the largest whole unit.
pub fn age(now_ms: i64, ms: i64) -> String {
    let s = (now_ms - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

pub(crate) use crate::cli::stats::bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_inert() {
        let shown = untrusted("a\u{202E}b\u{1b}[31mc\nd");
        assert_eq!(shown, "a\u{FFFD}b\u{FFFD}[31mc\nd");
        let page = document("t", "/", html! { bdi { (untrusted("<script>\"'&")) } }).into_string();
        assert!(page.contains("&lt;script&gt;&quot;'&amp;"), "{page}");
        assert!(!page.contains("<script>"));
        assert_eq!(duration(61), "1:01");
        assert_eq!(duration(3661), "1:01:01");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(age(10_000, 0), "10 s ago");
    }
}
