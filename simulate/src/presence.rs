//! Presence clients and frontends for the tests and the benchmark: a
//! WebSocket client that keeps the last count it was sent (and can be
//! closed cleanly, cut without a close frame, or frozen so it answers no
//! ping), and a presence-only coordinator process started next to a
//! [`LocalCluster`](crate::cluster::LocalCluster).

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_common::api::Count;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// What the client should do with its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Read,
    /// Keep the connection open but read nothing: pings go unanswered.
    Freeze,
    /// Drop the connection without a close frame.
    Cut,
    /// Send a close frame and end.
    Close,
}

/// What a socket heard.
#[derive(Debug, Default)]
struct Heard {
    /// The last count and when it arrived.
    last: Option<(u64, Instant)>,
    /// The server's close frame (code, reason), if one came.
    closed: Option<(u16, String)>,
    /// The connection ended (for any reason).
    ended: bool,
}

/// One presence WebSocket.
pub struct PresenceSocket {
    heard: Arc<Mutex<Heard>>,
    control: watch::Sender<Control>,
    task: JoinHandle<()>,
}

/// A connect the server refused before the upgrade (an HTTP status).
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// `ws://` URL of a key's presence on the frontend at `base` (`http://…`).
pub fn socket_url(base: &str, tenant: &str, key: &str) -> String {
    format!(
        "{}/presence/{tenant}/{key}",
        base.replacen("http://", "ws://", 1)
    )
}

impl PresenceSocket {
    /// Opens a socket to `url` (see [`socket_url`]). An HTTP refusal is
    /// `Err(Refused)` inside `Ok`; a network failure is the outer error.
    pub async fn connect(url: &str) -> anyhow::Result<Result<Self, Refused>> {
        let request = url.into_client_request()?;
        let (stream, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(connected) => connected,
            Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => {
                let status = answer.status().as_u16();
                let body = answer
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Ok(Err(Refused { status, body }));
            }
            Err(e) => return Err(e).with_context(|| format!("connect {url}")),
        };
        let heard = Arc::new(Mutex::new(Heard::default()));
        let (control, mut wanted) = watch::channel(Control::Read);
        let task = tokio::spawn({
            let heard = heard.clone();
            async move {
                let mut stream = stream;
                loop {
                    tokio::select! {
                        message = stream.next() => {
                            let mut heard = heard.lock().unwrap();
                            match message {
                                Some(Ok(Message::Text(text))) => {
                                    if let Ok(count) = serde_json::from_str::<Count>(&text) {
                                        heard.last = Some((count.count, Instant::now()));
                                    }
                                }
                                Some(Ok(Message::Close(frame))) => {
                                    heard.closed = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                                    heard.ended = true;
                                    return;
                                }
                                Some(Ok(_)) => {}
                                Some(Err(_)) | None => {
                                    heard.ended = true;
                                    return;
                                }
                            }
                        }
                        changed = wanted.changed() => {
                            let control = if changed.is_ok() { *wanted.borrow() } else { Control::Cut };
                            match control {
                                Control::Read => {}
                                Control::Freeze => {
                                    // Hold the connection, read nothing.
                                    let _ = wanted.wait_for(|c| *c != Control::Freeze).await;
                                    return;
                                }
                                Control::Cut => return,
                                Control::Close => {
                                    let _ = stream.send(Message::Close(Some(CloseFrame {
                                        code: CloseCode::Normal,
                                        reason: "bye".into(),
                                    }))).await;
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        });
        Ok(Ok(PresenceSocket {
            heard,
            control,
            task,
        }))
    }

    /// The last count sent, if any yet.
    pub fn count(&self) -> Option<u64> {
        self.heard.lock().unwrap().last.map(|(n, _)| n)
    }

    /// The last count sent and when it arrived.
    pub fn last(&self) -> Option<(u64, Instant)> {
        self.heard.lock().unwrap().last
    }

    /// The server's close frame, once the socket ended with one.
    pub fn close_frame(&self) -> Option<(u16, String)> {
        self.heard.lock().unwrap().closed.clone()
    }

    /// Whether the connection has ended.
    pub fn ended(&self) -> bool {
        self.heard.lock().unwrap().ended
    }

    /// Sends a close frame and ends.
    pub async fn close(mut self) {
        let _ = self.control.send(Control::Close);
        let _ = (&mut self.task).await;
    }

    /// Ends the connection without a close frame (as a crashed client).
    pub async fn cut(mut self) {
        let _ = self.control.send(Control::Cut);
        let _ = (&mut self.task).await;
    }

    /// Keeps the connection but stops reading: the server's pings go
    /// unanswered (as a client whose network vanished). Dropping the
    /// socket later ends it.
    pub fn freeze(&self) {
        let _ = self.control.send(Control::Freeze);
    }
}

impl Drop for PresenceSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until every socket in `sockets` shows `want`, polling with a
/// deadline. Returns how long it took.
pub async fn wait_all_show(
    what: &str,
    sockets: &[&PresenceSocket],
    want: u64,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    crate::wait::until(what, timeout, || async {
        let wrong: Vec<Option<u64>> = sockets
            .iter()
            .map(|s| s.count())
            .filter(|c| *c != Some(want))
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} sockets show something else than {want}, e.g. {:?}",
                wrong.len(),
                sockets.len(),
                &wrong[..wrong.len().min(5)]
            ))
        }
    })
    .await?;
    Ok(started.elapsed())
}

/// A presence-only coordinator (`--presence-frontend-of`), killed with
/// -9 when dropped.
pub struct PresenceFrontend {
    child: Option<Child>,
    url: String,
}

impl PresenceFrontend {
    /// Starts one in front of the coordinator at `primary`, with extra
    /// `args`, logging to `log`, and waits until it answers.
    pub async fn start(
        bins: &Path,
        primary: &str,
        token: Option<&str>,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let port = crate::cluster::free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = Command::new(bins.join("coordinator"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--presence-frontend-of", primary])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env("NO_COLOR", "1");
        if let Some(token) = token {
            command.env("TALLY_CLUSTER_TOKEN", token);
        }
        let child = command.spawn().context("start a presence frontend")?;
        let frontend = PresenceFrontend {
            child: Some(child),
            url,
        };
        let http = reqwest::Client::new();
        let health = format!("{}/health", frontend.url);
        crate::wait::until("the presence frontend", Duration::from_secs(20), || async {
            match http.get(&health).send().await {
                Ok(answer) if answer.status().is_success() => Ok(()),
                Ok(answer) => Err(answer.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;
        Ok(frontend)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9 and reap; fails if it had died on its own.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("the presence frontend is not running")
        };
        if let Some(status) = child.try_wait()? {
            bail!("the presence frontend had already exited ({status})");
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for PresenceFrontend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
