//! The CLI's side of the REST API.

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use serde_json::Value;

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    /// How to start the daemon, for the message when it is not there.
    start_hint: String,
}

/// One line of a job's log.
pub struct LogLine<'a> {
    pub time: &'a str,
    pub stderr: bool,
    pub text: &'a str,
}

impl<'a> LogLine<'a> {
    pub fn parse(line: &'a str) -> LogLine<'a> {
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(time), Some(stream @ ("o" | "e")), text) => LogLine {
                time,
                stderr: stream == "e",
                text: text.unwrap_or(""),
            },
            _ => LogLine {
                time: "",
                stderr: false,
                text: line,
            },
        }
    }
}

impl Client {
    /// Finds the daemon: `--server`/`CAPSTAN_SERVER`, else the home's running daemon.
    pub fn connect(
        home: Option<&Path>,
        server: Option<&str>,
        token: Option<&str>,
    ) -> anyhow::Result<Client> {
        let home_path = home
            .map(Path::to_path_buf)
            .or_else(|| crate::home::locate(None).ok());
        let start_hint = match &home_path {
            Some(h) => format!("start one with `capstan --home {} serve`", h.display()),
            None => "start one with `capstan --home HOME serve`".to_string(),
        };
        let info = home_path.as_deref().and_then(crate::daemon::read_info);
        let base = match (server, &info) {
            (Some(s), _) => s.trim_end_matches('/').to_string(),
            (None, Some(i)) => i.url.clone(),
            (None, None) => match &home_path {
                Some(h) => bail!(
                    "no capstan daemon is running for {}: {start_hint}",
                    h.display()
                ),
                None => {
                    bail!("no capstan daemon: pass --server URL or --home DIR, or {start_hint}")
                }
            },
        };
        let token = match (token, &info) {
            (Some(t), _) => t.to_string(),
            (None, Some(i)) => i.token.clone(),
            (None, None) => bail!("no API token: set CAPSTAN_TOKEN (see `capstan token create`)"),
        };
        let http = reqwest::Client::builder()
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            base,
            token,
            http,
            start_hint,
        })
    }

    pub fn from_parts(base: String, token: String) -> Client {
        Client {
            base,
            token,
            http: reqwest::Client::new(),
            start_hint: String::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!("no capstan daemon at {}: {}", self.base, self.start_hint)
            } else {
                anyhow!("cannot reach the capstan daemon at {}: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or("").to_string();
        let err = if message.is_empty() {
            anyhow!("the daemon answered {status}")
        } else {
            anyhow!("{message}")
        };
        // Permission refusals have their own exit code.
        if status == reqwest::StatusCode::FORBIDDEN {
            eprintln!("error: {err}");
            return Err(crate::Exit(crate::exit::DENIED).into());
        }
        Err(err)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        resp.json().await.context("the daemon's answer is not JSON")
    }

    /// A `GET` whose answer is not JSON (a tar, say), whole.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        let bytes = resp
            .bytes()
            .await
            .context("the daemon's answer broke off")?;
        Ok(bytes.to_vec())
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?;
        resp.json().await.context("the daemon's answer is not JSON")
    }

    /// Streams a job's log, calling `each` per complete line; returns when the job has ended
    /// (with `follow`) or the log is read.
    pub async fn logs(
        &self,
        id: i64,
        follow: bool,
        activity: Option<&str>,
        mut each: impl FnMut(LogLine<'_>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        // Activity names are recipe names (`[A-Za-z0-9_-]`, checked when the home loads), with
        // `:N` for a search's part: nothing to escape.
        let activity = activity.map_or(String::new(), |a| format!("&activity={a}"));
        let resp = self
            .send(self.http.get(format!(
                "{}/api/v1/jobs/{id}/logs?follow={follow}{activity}",
                self.base
            )))
            .await?;
        let mut stream = resp.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the log stream broke off")?;
            pending.extend_from_slice(&chunk);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                each(LogLine::parse(&text))?;
            }
        }
        if !pending.is_empty() {
            let text = String::from_utf8_lossy(&pending);
            each(LogLine::parse(&text))?;
        }
        Ok(())
    }
}
