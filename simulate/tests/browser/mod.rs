//! A headless chromium driven over the Chrome DevTools Protocol, just
//! enough for the dashboard test: open a page, evaluate JavaScript in it,
//! take a screenshot. It talks to a system chromium (Debian's package,
//! installed by `scripts/install-test-deps.sh`) through its
//! `--remote-debugging-port`, so nothing is downloaded at test time.

use anyhow::{bail, Context};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use simulate::wait;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The chromium process; killed when dropped.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    page: Page,
}

/// A handle on the browser's one page; cheap to clone into polling closures.
#[derive(Clone)]
pub struct Page {
    socket: Arc<Mutex<Socket>>,
    next_id: Arc<AtomicU64>,
}

/// The chromium binary: `$CHROMIUM`, else the first of the usual names on PATH.
fn chromium() -> anyhow::Result<String> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Ok(path);
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()?;
        if found.status.success() {
            return Ok(String::from_utf8_lossy(&found.stdout).trim().to_string());
        }
    }
    bail!("no chromium on PATH: run scripts/install-test-deps.sh (apt-get install chromium)")
}

impl Browser {
    /// Starts a headless chromium with a `width`×`height` window and
    /// connects to its page.
    pub async fn launch(width: u32, height: u32) -> anyhow::Result<Self> {
        let profile = tempfile::tempdir()?;
        let log = std::fs::File::create(profile.path().join("chromium.log"))?;
        let child = Command::new(chromium()?)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.path().display()),
                &format!("--window-size={width},{height}"),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start chromium")?;
        let port_file = profile.path().join("DevToolsActivePort");
        let port: u16 = wait::until("chromium's DevTools port", Duration::from_secs(30), || {
            let port_file = port_file.clone();
            async move {
                let text = std::fs::read_to_string(&port_file).map_err(|e| e.to_string())?;
                text.lines()
                    .next()
                    .and_then(|l| l.trim().parse().ok())
                    .ok_or_else(|| format!("incomplete: {text:?}"))
            }
        })
        .await?;
        let list_url = format!("http://127.0.0.1:{port}/json/list");
        let ws_url: String = wait::until("chromium's page target", Duration::from_secs(10), || {
            let list_url = list_url.clone();
            async move {
                let targets: Vec<Value> = reqwest::get(&list_url)
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_string)
                    .ok_or_else(|| format!("{targets:?}"))
            }
        })
        .await?;
        let (socket, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .context("cannot connect to chromium's page")?;
        let page = Page {
            socket: Arc::new(Mutex::new(socket)),
            next_id: Arc::new(AtomicU64::new(1)),
        };
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await?;
        Ok(Browser {
            child,
            _profile: profile,
            page,
        })
    }

    pub fn page(&self) -> Page {
        self.page.clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page {
    /// Sends one DevTools command and returns its result, skipping the
    /// events that arrive in between.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut socket = self.socket.lock().await;
        let request = json!({"id": id, "method": method, "params": params});
        socket.send(Message::text(request.to_string())).await?;
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(message) = socket.next().await {
                let Message::Text(text) = message? else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text)?;
                if value["id"] == id {
                    return Ok(value);
                }
            }
            bail!("chromium closed the DevTools connection")
        })
        .await
        .with_context(|| format!("{method} got no answer in 30 s"))??;
        if let Some(error) = answer.get("error") {
            bail!("{method} failed: {error}");
        }
        Ok(answer["result"].clone())
    }

    /// Loads `url` (the answer comes once navigation has started; poll the
    /// DOM for what should appear).
    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        let result = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = result.get("errorText") {
            bail!("cannot open {url}: {error}");
        }
        Ok(())
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns
    /// its value; a thrown exception is an error.
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            bail!("{expression} threw: {details}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `expression` until `accept` takes its value, or fails after
    /// `timeout` with the last value seen.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        expression: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let accept = &accept;
        wait::until(what, timeout, || {
            let page = self.clone();
            async move {
                match page.eval(expression).await {
                    Ok(value) if accept(&value) => Ok(value),
                    Ok(value) => Err(value.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<Vec<u8>> {
        let result = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let data = result["data"].as_str().context("screenshot without data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, &png)?;
        Ok(png)
    }
}
