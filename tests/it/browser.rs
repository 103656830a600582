//! A real headless Chromium, driven over the DevTools protocol (a WebSocket carrying JSON
//! commands): the web console is tested the way an operator's browser meets it.
//!
//! Chromium is Debian's `chromium` package (`.ci/run` installs it). On a machine without
//! it the browser tests print a loud SKIPPED line and pass, unless `QUIVER_REQUIRE_BROWSER`
//! is set (CI sets it), which turns the skip into a failure.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The Chromium binary: `QUIVER_CHROMIUM`, else the first of the usual names on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QUIVER_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A headless browser with one page open; killed when dropped.
pub struct Browser {
    _child: tokio::process::Child,
    ws: Ws,
    session: String,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium, or returns `None` after saying loudly that the test is skipped
    /// (panics instead when `QUIVER_REQUIRE_BROWSER` is set).
    pub async fn start(test: &str) -> Option<Browser> {
        Self::start_with(test, &[]).await
    }

    /// [`Browser::start`] with extra command-line flags.
    pub async fn start_with(test: &str, flags: &[&str]) -> Option<Browser> {
        let Some(bin) = chromium() else {
            if std::env::var_os("QUIVER_REQUIRE_BROWSER").is_some() {
                panic!(
                    "{test}: no Chromium found (install Debian's `chromium`, or set \
                     QUIVER_CHROMIUM) and QUIVER_REQUIRE_BROWSER is set"
                );
            }
            eprintln!(
                "\n*** SKIPPED {test}: no Chromium on this machine (apt-get install chromium, or \
                 set QUIVER_CHROMIUM); CI sets QUIVER_REQUIRE_BROWSER=1 to fail instead ***\n"
            );
            return None;
        };
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = tokio::process::Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1300,900",
            ])
            .args(flags)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        // Chromium prints where its DevTools endpoint listens.
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_string();
                }
                seen.push(line);
            }
            panic!("chromium exited without a DevTools endpoint: {seen:#?}");
        })
        .await
        .expect("chromium announces its DevTools endpoint within 30 s");
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools WebSocket");
        let mut b = Browser {
            _child: child,
            ws,
            session: String::new(),
            next: 0,
            _profile: profile,
        };
        let target = b
            .command(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b
            .command(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b.page("Page.enable", json!({})).await;
        Some(b)
    }

    /// Sends one DevTools command and waits for its answer (events in between are dropped).
    async fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("DevTools send");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let m = self
                    .ws
                    .next()
                    .await
                    .expect("DevTools connection open")
                    .expect("DevTools message");
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(t.as_str()).expect("DevTools JSON");
                if v["id"].as_u64() == Some(id) {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"));
        if let Some(e) = answer.get("error") {
            panic!("{method}: {e}");
        }
        answer["result"].clone()
    }

    async fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.command(Some(&session), method, params).await
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn open(&mut self, url: &str) {
        self.page("Page.navigate", json!({ "url": url })).await;
        self.wait("document loaded", "document.readyState === 'complete'")
            .await;
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value as JSON; an
    /// exception fails the test.
    pub async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .page(
                "Runtime.evaluate",
                json!({ "expression": js, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("script failed: {js}\n{e:#}");
        }
        r["result"]["value"].clone()
    }

    /// Waits up to 15 s for `js` to be truthy, returning its value.
    pub async fn wait(&mut self, what: &str, js: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.eval(js).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                let shot = std::env::temp_dir().join("quiver-console-failure.png");
                self.screenshot(&shot).await;
                panic!(
                    "waited 15 s for {what} ({js}); the page ({}) shows:\n{text}",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the input `selector` the way a user would (focus, value, `input`
    /// and `change` events).
    pub async fn fill(&mut self, selector: &str, text: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) throw new Error('no ' + {sel}); \
             e.focus(); e.value = {text}; e.dispatchEvent(new Event('input', {{bubbles: true}})); \
             e.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
            sel = json!(selector),
            text = json!(text),
        );
        self.eval(&js).await;
    }

    /// Clicks the element `selector` with the mouse, at its centre (a real input event, so a
    /// disabled button stays unclicked).
    pub async fn click(&mut self, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) throw new Error('no ' + {sel}); \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            sel = json!(selector)
        );
        let at = self.eval(&js).await;
        let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.page(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// The text of the element `selector` (empty when it is missing).
    pub async fn text(&mut self, selector: &str) -> String {
        let js = format!(
            "(() => {{ const e = document.querySelector({sel}); return e ? e.textContent : ''; }})()",
            sel = json!(selector)
        );
        self.eval(&js).await.as_str().unwrap_or("").to_string()
    }

    /// A PNG of the page (for looking at a failure).
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine as _;
        let r = self
            .page("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or(""))
            .expect("screenshot base64");
        std::fs::write(path, png).expect("write screenshot");
    }
}
