//! What alitx says about an error answer that names no S3 error code: a
//! credential proxy's JSON, a gateway's HTML page, a HEAD's empty body. The
//! message shows the status, who answered (its `Server` header) and the
//! start of the body as text; 401/403/503 from something that is not S3 get
//! a hint of their own. Only the answer is shown, never the request (its
//! `Authorization` header, its URL's query).

use aws_sdk_s3::config::http::HttpResponse;

/// How much of a body a message shows, in bytes.
const BODY_SHOWN: usize = 300;

/// How much of a `Server` header a message shows, in bytes.
const SERVER_SHOWN: usize = 80;

/// An error answer without an S3 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::storage) struct Uncoded<'a> {
    pub status: u16,
    /// Who answered, as its `Server` header says.
    pub server: Option<&'a str>,
    /// Whether S3 sent it: every S3 answer carries `x-amz-request-id`, even
    /// a HEAD's bodiless error.
    pub from_s3: bool,
    pub body: &'a [u8],
}

/// What to check after an answer from something that is not S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    CredentialsRefused,
    Unavailable,
}

impl Hint {
    fn text(self) -> &'static str {
        match self {
            Hint::CredentialsRefused => {
                "the credentials were refused by something that is not S3: a credential proxy or \
                 gateway in the way? check its token/keys"
            }
            Hint::Unavailable => {
                "the service in front of the store is unavailable: a proxy or gateway that lost \
                 its upstream or its keys? check it, then retry"
            }
        }
    }
}

/// Whether S3 itself sent `response` (see [`Uncoded::from_s3`]).
pub(in crate::storage) fn sent_by_s3(response: &HttpResponse) -> bool {
    response.headers().contains_key("x-amz-request-id")
}

impl<'a> Uncoded<'a> {
    pub fn of(response: &'a HttpResponse) -> Self {
        Uncoded {
            status: response.status().as_u16(),
            server: response.headers().get("server"),
            from_s3: sent_by_s3(response),
            body: response.body().bytes().unwrap_or_default(),
        }
    }

    fn hint(&self) -> Option<Hint> {
        match (self.from_s3, self.status) {
            (false, 401 | 403) => Some(Hint::CredentialsRefused),
            (false, 503) => Some(Hint::Unavailable),
            _ => None,
        }
    }

    /// `HTTP 401 from <server> (not S3), body: <text>`, and the hint.
    pub fn describe(&self) -> String {
        let who = match (self.from_s3, self.server) {
            (true, _) => " without an S3 error code".to_string(),
            (false, Some(server)) => {
                format!(" from {} (not S3)", text(server.as_bytes(), SERVER_SHOWN))
            }
            (false, None) => " from a server that is not S3".to_string(),
        };
        let body = match text(self.body, BODY_SHOWN) {
            shown if shown.is_empty() => "empty body".to_string(),
            shown => format!("body: {shown}"),
        };
        let hint = self
            .hint()
            .map(|h| format!("; {}", h.text()))
            .unwrap_or_default();
        format!("HTTP {}{who}, {body}{hint}", self.status)
    }
}

/// The first `limit` bytes of `bytes` (surrounding whitespace trimmed) as
/// one line of text: control characters escaped (`\n`, `\u{1b}`), bytes
/// that are not UTF-8 as `\xNN`, and `…` when something was left out.
pub(super) fn text(bytes: &[u8], limit: usize) -> String {
    let bytes = bytes.trim_ascii();
    let mut shown = String::new();
    let mut used = 0;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if used + c.len_utf8() > limit {
                return shown + "…";
            }
            used += c.len_utf8();
            match c.is_control() {
                true => shown.extend(c.escape_default()),
                false => shown.push(c),
            }
        }
        for byte in chunk.invalid() {
            if used + 1 > limit {
                return shown + "…";
            }
            used += 1;
            shown += &format!("\\x{byte:02x}");
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_as_text() {
        let long = "a".repeat(400);
        let cases: &[(&[u8], usize, &str)] = &[
            (b"", 300, ""),
            (b" \r\n ", 300, ""),
            (
                b"{\"error\": \"token expired\"}\n",
                300,
                "{\"error\": \"token expired\"}",
            ),
            (
                b"line one\nline two\ttab\x1b[0m",
                300,
                "line one\\nline two\\ttab\\u{1b}[0m",
            ),
            (b"\x00\x9f\xffPK", 300, "\\u{0}\\x9f\\xffPK"),
            (long.as_bytes(), 300, &format!("{}…", &long[..300])),
            (b"exactly", 7, "exactly"),
            (b"one more", 7, "one mor…"),
            // A character that would cross the limit is left out whole.
            ("ab\u{e9}".as_bytes(), 3, "ab…"),
            (b"ab\xff", 2, "ab…"),
        ];
        for (body, limit, expected) in cases {
            assert_eq!(text(body, *limit), *expected, "{body:?}");
        }
    }

    #[test]
    fn hints_go_to_answers_that_are_not_s3() {
        let cases = [
            (false, 401, Some(Hint::CredentialsRefused)),
            (false, 403, Some(Hint::CredentialsRefused)),
            (false, 503, Some(Hint::Unavailable)),
            (false, 404, None),
            (false, 500, None),
            (true, 401, None),
            (true, 403, None),
            (true, 503, None),
        ];
        for (from_s3, status, hint) in cases {
            let answer = Uncoded {
                status,
                server: None,
                from_s3,
                body: b"",
            };
            assert_eq!(answer.hint(), hint, "from S3: {from_s3}, HTTP {status}");
        }
    }

    #[test]
    fn describes_status_server_body_and_hint() {
        let answer = |from_s3, server, body: &'static [u8]| Uncoded {
            status: 401,
            server,
            from_s3,
            body,
        };
        let cases = [
            (
                answer(false, Some("security-proxy"), b"{\"error\": \"stale\"}"),
                "HTTP 401 from security-proxy (not S3), body: {\"error\": \"stale\"}; the credentials \
                 were refused by something that is not S3: a credential proxy or gateway in the way? \
                 check its token/keys",
            ),
            (
                answer(false, None, b""),
                "HTTP 401 from a server that is not S3, empty body; the credentials were refused by \
                 something that is not S3: a credential proxy or gateway in the way? check its \
                 token/keys",
            ),
            (
                answer(true, Some("Ceph\nRGW"), b"<html>"),
                "HTTP 401 without an S3 error code, body: <html>",
            ),
            (
                answer(false, Some("x\ny"), b"\n"),
                "HTTP 401 from x\\ny (not S3), empty body; the credentials were refused by something \
                 that is not S3: a credential proxy or gateway in the way? check its token/keys",
            ),
        ];
        for (answer, expected) in cases {
            assert_eq!(answer.describe(), expected);
        }
    }
}
