//! Plays the person in the device flow with plain HTTP requests and a cookie jar, the way a
//! browser submits Keycloak's HTML forms: enter the user code, sign in, then accept or deny
//! on the consent page.

use reqwest::Url;

/// The button pressed on the consent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    Accept,
    Deny,
}

/// The page the browser ends on.
#[derive(Debug)]
pub struct Page {
    pub url: Url,
    pub status: u16,
    pub html: String,
}

pub struct Browser {
    http: reqwest::Client,
}

impl Browser {
    pub fn new() -> Browser {
        let mut headers = reqwest::header::HeaderMap::new();
        // Keycloak serves the JSON device authorization endpoint and the HTML user code form
        // at the same path and chooses by the Accept header. A browser requests HTML.
        headers.insert(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static("text/html,application/xhtml+xml"),
        );
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .default_headers(headers)
            .build()
            .expect("browser HTTP client");
        Browser { http }
    }

    async fn open(&self, url: &str) -> Page {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        Page::read(response).await
    }

    async fn submit(&self, page: &Page, action: &str, form: &[(&str, &str)]) -> Page {
        let url = page
            .url
            .join(action)
            .unwrap_or_else(|e| panic!("form action {action}: {e}"));
        let response = self
            .http
            .post(url.clone())
            .form(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        Page::read(response).await
    }

    /// Opens the verification page, enters `user_code`, signs in as `username` and presses
    /// the `consent` button on the consent page. Returns the last page.
    pub async fn complete_device_login(
        &self,
        verification_uri: &str,
        user_code: &str,
        username: &str,
        password: &str,
        consent: Consent,
    ) -> Page {
        let code_page = self.open(verification_uri).await;
        let action = code_page.form_action("kc-user-verify-device-user-code-form");
        let login_page = self
            .submit(&code_page, &action, &[("device_user_code", user_code)])
            .await;

        let action = login_page.form_action("kc-form-login");
        let consent_page = self
            .submit(
                &login_page,
                &action,
                &[
                    ("username", username),
                    ("password", password),
                    ("credentialId", ""),
                ],
            )
            .await;

        let action = consent_page.form_action("login-actions/consent");
        let code = consent_page.hidden_input("code");
        // The buttons are named accept and cancel and carry no value, so the browser sends
        // the name with an empty value.
        let button = match consent {
            Consent::Accept => "accept",
            Consent::Deny => "cancel",
        };
        self.submit(
            &consent_page,
            &action,
            &[("code", code.as_str()), (button, "")],
        )
        .await
    }
}

impl Page {
    async fn read(response: reqwest::Response) -> Page {
        let url = response.url().clone();
        let status = response.status().as_u16();
        let html = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("body of {url}: {e}"));
        Page { url, status, html }
    }

    /// Returns the `action` of the first `<form>` whose opening tag contains `marker` (an id
    /// or part of the action URL), with HTML entities decoded.
    pub fn form_action(&self, marker: &str) -> String {
        let tag = self
            .html
            .match_indices("<form")
            .map(|(start, _)| {
                let end = self.html[start..]
                    .find('>')
                    .map_or(self.html.len(), |i| start + i);
                &self.html[start..end]
            })
            .find(|tag| tag.contains(marker))
            .unwrap_or_else(|| {
                panic!(
                    "no form {marker:?} on {} (HTTP {}):\n{}",
                    self.url,
                    self.status,
                    self.excerpt()
                )
            });
        attribute(tag, "action")
            .unwrap_or_else(|| panic!("form {marker:?} on {} has no action", self.url))
    }

    /// Returns the value of the input named `name`.
    pub fn hidden_input(&self, name: &str) -> String {
        let needle = format!("name=\"{name}\"");
        let start = self
            .html
            .find(&needle)
            .unwrap_or_else(|| panic!("no input {name:?} on {}:\n{}", self.url, self.excerpt()));
        let tag_start = self.html[..start].rfind('<').unwrap_or(0);
        let tag_end = self.html[start..]
            .find('>')
            .map_or(self.html.len(), |i| start + i);
        attribute(&self.html[tag_start..tag_end], "value")
            .unwrap_or_else(|| panic!("input {name:?} on {} has no value", self.url))
    }

    /// Returns the page's visible title, for assertions and failure messages.
    pub fn title(&self) -> String {
        let start = self
            .html
            .find("id=\"kc-page-title\"")
            .map(|i| i + 18)
            .unwrap_or(0);
        let rest = &self.html[start..];
        let text_start = rest.find('>').map_or(0, |i| i + 1);
        let text_end = rest[text_start..]
            .find('<')
            .map_or(rest.len(), |i| text_start + i);
        rest[text_start..text_end].trim().to_owned()
    }

    fn excerpt(&self) -> String {
        self.html.chars().take(2000).collect()
    }
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = tag[start..].find('"')? + start;
    Some(decode_entities(&tag[start..end]))
}

fn decode_entities(text: &str) -> String {
    text.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}
