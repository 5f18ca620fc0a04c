//! HTML building blocks of the dashboard: escaping ([`esc`]), the page frame with its navigation ([`page`]), the
//! login page ([`login`]) and error pages ([`error_page`]).
//!
//! Pages are rendered on the server as plain strings: every value that comes from a request, a service or the
//! registry goes through [`esc`] (or [`attr`] inside attributes), so no service can inject markup into a page.

use super::session::Session;
use std::fmt::Write;

/// The stylesheet, embedded in the binary.
pub(crate) const CSS: &str = include_str!("assets/app.css");
/// The script, embedded in the binary.
pub(crate) const JS: &str = include_str!("assets/app.js");
/// The icon, embedded in the binary.
pub(crate) const ICON: &str = include_str!("assets/icon.svg");

/// A short hash of the assets, appended to their URLs so that a new binary's assets are fetched while the old
/// ones may be cached for good.
pub(crate) fn assets_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| micro_core::schema::hash(format!("{CSS}{JS}{ICON}").as_bytes())[..12].to_string())
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped: safe in element content and in quoted attributes.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// [`esc`], for attribute values (the same escaping; a separate name says where it goes).
pub(crate) fn attr(text: &str) -> String {
    esc(text)
}

/// The pages of the navigation: path, label, and whether only admins see it.
const NAV: &[(&str, &str, bool)] = &[
    ("/services", "Services", false),
    ("/runtime", "Runtime", false),
    ("/store", "Store", false),
    ("/config", "Config", false),
    ("/events", "Events", false),
    ("/registry", "Registry", false),
    ("/auth", "Auth", true),
];

/// The frame of a page: head (assets, CSRF token), header with navigation and logout when `session` is given, and
/// `body` as the main content. `active` is the path of the navigation entry to mark as current.
pub(crate) fn page(session: Option<&Session>, active: &str, title: &str, body: &str) -> String {
    let v = assets_version();
    let mut out = String::with_capacity(body.len() + 2048);
    let csrf = session.map(|s| s.csrf.as_str()).unwrap_or_default();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\"><meta name=\"csrf\" content=\"{csrf}\">\
         <title>{title} · micro</title><link rel=\"icon\" href=\"/assets/icon.svg?v={v}\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"/assets/app.css?v={v}\"><script src=\"/assets/app.js?v={v}\" defer></script>\
         </head><body><a class=\"skip\" href=\"#main\">Skip to content</a><header><a class=\"brand\" href=\"/\">micro</a>",
        csrf = attr(csrf),
        title = esc(title),
    );
    if let Some(session) = session {
        out.push_str("<nav aria-label=\"Main\"><ul>");
        for (path, label, admin_only) in NAV {
            if *admin_only && !session.admin {
                continue;
            }
            let current = if *path == active { " aria-current=\"page\"" } else { "" };
            let _ = write!(out, "<li><a href=\"{path}\"{current}>{label}</a></li>");
        }
        let _ = write!(
            out,
            "</ul></nav><div class=\"who\"><span title=\"account {account}\">{name}</span>\
             <form id=\"logout\" method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Log out</button></form></div>",
            account = attr(&session.account),
            name = esc(&session.name),
            csrf = attr(&session.csrf),
        );
    }
    let _ = write!(out, "</header><main id=\"main\" tabindex=\"-1\">{body}</main></body></html>");
    out
}

/// The login page: the form and, after a failed attempt, its error. `next` is where to go after logging in.
pub(crate) fn login(error: Option<&str>, username: &str, next: &str) -> String {
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))).unwrap_or_default();
    let body = format!(
        "<section class=\"login\"><h1>Log in to micro</h1>\
         <form id=\"login\" method=\"post\" action=\"/login\">{error}\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <label for=\"username\">Username</label>\
         <input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus value=\"{username}\">\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Log in</button></form></section>",
        next = attr(next),
        username = attr(username),
    );
    page(None, "", "Log in", &body)
}

/// An error page: a heading and the message, as an alert.
pub(crate) fn error_page(session: Option<&Session>, active: &str, title: &str, message: &str) -> String {
    let body = format!("<h1>{}</h1><p class=\"error\" role=\"alert\">{}</p>", esc(title), esc(message));
    page(session, active, title, &body)
}

/// The last second `<time>` can show (9999-12-31 23:59:59 UTC).
const LAST_SECOND: i64 = 253_402_300_799;

/// A `<time>` for a unix time, as UTC `YYYY-MM-DD HH:MM:SS`, or `-` for 0. Services write their times in seconds,
/// milliseconds or nanoseconds (events do): a value too large for seconds is read as the finer unit it fits.
pub(crate) fn time(unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    let mut secs = unix;
    for divisor in [1_000, 1_000_000, 1_000_000_000] {
        if secs <= LAST_SECOND {
            break;
        }
        secs = unix / divisor;
    }
    if secs > LAST_SECOND {
        return esc(&unix.to_string());
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    let text = humantime::format_rfc3339_seconds(at).to_string();
    format!("<time datetime=\"{text}\">{}</time>", text.trim_end_matches('Z').replace('T', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(esc("plain"), "plain");
    }

    #[test]
    fn anonymous_pages_have_no_navigation_and_the_login_form_names_its_inputs() {
        let html = login(Some("bad <password>"), "jo\"e", "/services");
        assert!(!html.contains("<nav"));
        assert!(html.contains("name=\"username\"") && html.contains("name=\"password\""));
        assert!(html.contains("bad &lt;password&gt;"));
        assert!(html.contains("value=\"jo&quot;e\""));
    }

    #[test]
    fn the_auth_link_is_for_admins_only() {
        use super::super::session::Tokens;
        let user = Session::new("bob".into(), "bob".into(), false, Tokens::default());
        let admin = Session::new("admin".into(), "admin".into(), true, Tokens::default());
        assert!(!page(Some(&user), "/services", "S", "").contains("href=\"/auth\""));
        let html = page(Some(&admin), "/auth", "S", "");
        assert!(html.contains("<a href=\"/auth\" aria-current=\"page\">"));
        assert!(html.contains(&admin.csrf));
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "-");
        assert!(time(1_700_000_000).contains(">2023-11-14 22:13:20<"));
        assert!(time(1_700_000_000_123).contains(">2023-11-14 22:13:20<"), "milliseconds");
        assert!(time(1_700_000_000_123_456_789).contains(">2023-11-14 22:13:20<"), "nanoseconds");
        assert!(time(i64::MAX).contains(">2262-04-11 23:47:16<"), "the largest value, read as nanoseconds");
    }
}
