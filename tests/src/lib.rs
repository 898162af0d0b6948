//! Shared fixtures of certgate's end-to-end tests: a PKI generated per test, a gateway started
//! in-process on port 0 with a real configuration file, the real `certgate` binary, and an
//! mTLS client speaking HTTP/1.1 or HTTP/2 with TLS session resumption.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_debug_implementations
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use cert_store::Uscc;
use gateway::config::Config;
use gateway::pki::{ClientSpec, DevCa};
use gateway::state::Gateway;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Sample department codes with valid check characters.
pub const APPROVAL: &str = "11110105MB0000001C";
/// 市场监管局.
pub const MARKET: &str = "11110105MB0000002F";
/// 运维中心 (admin).
pub const OPS: &str = "11110105MB0000006U";
/// A valid code that no department table in the tests lists.
pub const STRANGER: &str = "11110105MB0000007Y";
/// A department listed but disabled.
pub const DISABLED: &str = "11110105MB00000082";
/// 审计局 (auditor).
pub const AUDIT: &str = "11110105MB0000003J";
/// A city app acting for holders.
pub const APP: &str = "91110105MA0000005E";
/// The policy-push service (a department with the `policy-push` role, added by the tests that
/// need it).
pub const PUSH: &str = "12110105MB0000004J";
/// 营业执照: issued by MARKET, no consent needed.
pub const BUSINESS: &str = "11100000MB0000100D001";
/// 食品经营许可证: issued by MARKET, queries by holder need consent.
pub const FOOD: &str = "11100000MB0000100D002";
/// A real enterprise code (小米科技有限责任公司) used as a holder.
pub const XIAOMI: &str = "91110108551385082Q";
/// The example citizen id from GB 11643-1999.
pub const CITIZEN: &str = "11010519491231002X";

/// Licence types and access rules of the test gateways (`tests/fixtures/licensing.toml`):
/// the approval bureau may read the name, legal representative and holder id of business
/// licences for any purpose, and every field of food permits for matter `M-FOOD-001`; no
/// one-business-licence rule, so that a test may issue several licences to one holder (the
/// rule has its own test).
pub fn licensing() -> String {
    include_str!("../fixtures/licensing.toml").to_owned()
}

/// Request budgets far above what any test sends, for the departments of [`dept`]: the
/// budgets have tests of their own.
pub const UNLIMITED: &str = "rate_limits = { read = \"100000/s\", write = \"100000/s\", verify = \"100000/s\", export = \"1000/s\" }\n";

/// A PKI in a temporary directory: `dir/pki` holds the CA, server certificate and CRL.
pub struct TestPki {
    /// The temporary directory (also holds the gateway's configuration and data).
    pub dir: TempDir,
    /// The development CA.
    pub ca: DevCa,
}

impl TestPki {
    /// A new CA with a server certificate and an empty CRL.
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::init(&dir.path().join("pki"), storage::clock::now_utc()).unwrap();
        TestPki { dir, ca }
    }

    /// The PKI directory.
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// Issues a department certificate named `name` for the USCC `dept`.
    pub fn department(&self, name: &str, dept: &str) -> Identity {
        let dept: Uscc = dept.parse().unwrap();
        self.client(&ClientSpec::department(
            name,
            &dept,
            storage::clock::now_utc(),
        ))
    }

    /// Issues a client certificate to `spec`.
    pub fn client(&self, spec: &ClientSpec) -> Identity {
        let issued = self.ca.issue_client(spec).unwrap();
        Identity::load(&issued.cert, &issued.key)
    }

    /// A spec for a department certificate, to be altered by the test.
    pub fn spec(&self, name: &str, dept: &str) -> ClientSpec {
        ClientSpec::department(name, &dept.parse().unwrap(), storage::clock::now_utc())
    }

    /// Puts `name` in the CRL.
    pub fn revoke(&mut self, name: &str) {
        self.ca.revoke(name, storage::clock::now_utc()).unwrap();
    }

    /// The CA certificate's path.
    pub fn ca_pem(&self) -> PathBuf {
        self.pki_dir().join("ca.pem")
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// A client certificate and its key.
#[derive(Debug)]
pub struct Identity {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// The certificate file.
    pub cert_path: PathBuf,
    /// The key file.
    pub key_path: PathBuf,
}

impl Identity {
    /// Loads a PEM certificate and key.
    pub fn load(cert: &Path, key: &Path) -> Identity {
        Identity {
            chain: CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap(),
            key: PrivateKeyDer::from_pem_file(key).unwrap(),
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
        }
    }
}

/// A department row of the configuration file; its full name is `某区` and its name, and its
/// budgets are [`UNLIMITED`].
pub fn dept(id: &str, name: &str, roles: &[&str], enabled: bool) -> String {
    let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "\n[[departments]]\nid = \"{id}\"\nname = \"{name}\"\nfull_name = \"某区{name}\"\nroles = [{}]\nenabled = {enabled}\n{UNLIMITED}",
        roles.join(", ")
    )
}

/// The department table most tests use: approval (consumer), market (issuer), ops (admin),
/// and a disabled department.
pub fn standard_departments() -> String {
    [
        dept(APPROVAL, "行政审批局", &["consumer"], true),
        dept(MARKET, "市场监管局", &["issuer", "consumer"], true),
        dept(OPS, "运维中心", &["admin"], true),
        dept(DISABLED, "已撤销的部门", &["consumer"], false),
    ]
    .concat()
        + &dept(APP, "城市 app", &["holder-app"], true)
        + &dept(AUDIT, "审计局", &["auditor"], true)
}

/// Writes `dir/certgate.toml` with listeners on port 0, the PKI of `pki`, the extra
/// `[server]` lines and the department rows given.
pub fn write_config(pki: &TestPki, server_extra: &str, departments: &str) -> PathBuf {
    write_config_with_log(pki, server_extra, departments, "")
}

/// Like [`write_config`], with extra `[access_log]` lines.
pub fn write_config_with_log(
    pki: &TestPki,
    server_extra: &str,
    departments: &str,
    log_extra: &str,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let kek = pki.dir.path().join("kek");
    if !kek.exists() {
        let key = cert_store::crypto::Kek::generate().unwrap();
        std::fs::write(&kek, key.to_base64().as_str()).unwrap();
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let log_key = pki.dir.path().join("log-key");
    if !log_key.exists() {
        let seed = tlog::checkpoint::LogKey::generate_seed_base64().unwrap();
        std::fs::write(&log_key, seed).unwrap();
        std::fs::set_permissions(&log_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nops_listen = \"127.0.0.1:0\"\n{server_extra}\n\
         [tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nclient_ca = [\"pki/ca.pem\"]\ncrls = [\"pki/crl.pem\"]\n\
         [licensing]\nkek_file = \"kek\"\npublic_url = \"https://localhost\"\n\
         [access_log]\nkey_file = \"log-key\"\norigin = \"certgate.test/access-log\"\n{log_extra}\n\
         {departments}\n{}",
        licensing()
    );
    let path = pki.dir.path().join("certgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A gateway running inside the test process on ephemeral ports.
pub struct TestGateway {
    /// The mTLS listener.
    pub addr: SocketAddr,
    /// The operations listener.
    pub ops_addr: SocketAddr,
    /// The gateway's state (for reloads and metrics).
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    stop_ops: watch::Sender<bool>,
}

impl TestGateway {
    /// Starts a gateway with the configuration file at `config`.
    pub async fn start(config: &Path) -> TestGateway {
        let config = Config::load(config).unwrap();
        let listener = TcpListener::bind(config.server.listen).await.unwrap();
        let ops_listener = TcpListener::bind(config.server.ops_listen).await.unwrap();
        let (addr, ops_addr) = (
            listener.local_addr().unwrap(),
            ops_listener.local_addr().unwrap(),
        );
        let gateway = gateway::wiring::gateway(config).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (stop_ops, ops_stopped) = watch::channel(false);
        tokio::spawn(gateway::server::serve_ops(
            gateway.clone(),
            ops_listener,
            ops_stopped,
        ));
        let task = tokio::spawn(gateway::server::serve(gateway.clone(), listener, async {
            let _ = stopped.await;
        }));
        TestGateway {
            addr,
            ops_addr,
            gateway,
            stop: Some(stop),
            task: Some(task),
            stop_ops,
        }
    }

    /// Starts the standard gateway for `pki` with extra `[server]` lines.
    pub async fn standard(pki: &TestPki, server_extra: &str) -> TestGateway {
        TestGateway::start(&write_config(pki, server_extra, &standard_departments())).await
    }

    /// Asks the gateway to shut down and returns the task that finishes when it has.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("shutdown begun twice")
    }

    /// GET on the operations listener: status and body.
    pub async fn ops_get(&self, path: &str) -> (u16, String) {
        let tcp = TcpStream::connect(self.ops_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.stop_ops.send(true);
    }
}

/// Which HTTP version a client speaks (chosen by ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1
    H1,
    /// HTTP/2
    H2,
}

/// An mTLS client. Connections made through one client share its TLS session cache, so the
/// second connection resumes the first one's session.
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    proto: Proto,
}

impl Client {
    /// A client trusting `ca` and presenting `identity` (or no certificate).
    pub fn new(ca: &Path, identity: Option<&Identity>, proto: Proto) -> Client {
        Client::build(ca, identity, proto, true)
    }

    /// A client for comparing servers: every connection makes a full handshake (no session
    /// resumption) and offers X25519 only, a key exchange every peer speaks.
    pub fn full_handshakes(ca: &Path, identity: Option<&Identity>, proto: Proto) -> Client {
        Client::build(ca, identity, proto, false)
    }

    fn build(ca: &Path, identity: Option<&Identity>, proto: Proto, resume: bool) -> Client {
        gateway::tls::install_crypto_provider();
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = if resume {
            ClientConfig::builder()
        } else {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
            ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
        }
        .with_root_certificates(roots);
        let mut config = match identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match proto {
            Proto::H1 => vec![b"http/1.1".to_vec()],
            Proto::H2 => vec![b"h2".to_vec()],
        };
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Client {
            config: Arc::new(config),
            proto,
        }
    }

    /// Opens a TLS connection (no HTTP yet).
    pub async fn tls(&self, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(self.config.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// Opens a connection and performs the HTTP handshake.
    pub async fn connect(&self, addr: SocketAddr) -> anyhow::Result<Conn> {
        let tls = self.tls(addr).await?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        let io = TokioIo::new(tls);
        let (sender, task) = match self.proto {
            Proto::H1 => {
                let (s, c) = hyper::client::conn::http1::handshake(io).await?;
                (Sender::H1(s), tokio::spawn(c))
            }
            Proto::H2 => {
                let (s, c) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                (Sender::H2(s), tokio::spawn(c))
            }
        };
        Ok(Conn {
            sender,
            resumed,
            task: Some(task),
        })
    }

    /// A GET on a new connection.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
        self.connect(addr).await?.get(path).await
    }

    /// A POST on a new connection, its body sent as `application/json` (whatever it holds).
    pub async fn post(
        &self,
        addr: SocketAddr,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        self.connect(addr)
            .await?
            .send_with(
                Method::POST,
                path,
                &[("content-type", "application/json")],
                body.into(),
            )
            .await
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// An open HTTP connection over mTLS.
pub struct Conn {
    sender: Sender,
    /// True when the TLS session was resumed.
    pub resumed: bool,
    task: Option<JoinHandle<Result<(), hyper::Error>>>,
}

impl Conn {
    /// Another handle on the same HTTP/2 connection, for concurrent requests; `None` on
    /// HTTP/1.1, which carries one request at a time.
    pub fn fork(&self) -> Option<Conn> {
        match &self.sender {
            Sender::H2(s) => Some(Conn {
                sender: Sender::H2(s.clone()),
                resumed: self.resumed,
                task: None,
            }),
            Sender::H1(_) => None,
        }
    }

    /// A GET on this connection.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, path, Bytes::new()).await
    }

    /// A GET with extra headers (`X-Purpose`, `X-Consent`, …).
    pub async fn get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        self.send_with(Method::GET, path, headers, Bytes::new())
            .await
    }

    /// Sends one request and reads the whole response. When the request fails because the
    /// connection failed (a TLS alert, say), the error carries the connection's own error.
    pub async fn send(&mut self, method: Method, path: &str, body: Bytes) -> anyhow::Result<Reply> {
        self.send_with(method, path, &[], body).await
    }

    /// A request with a JSON body (and `content-type: application/json`) and extra headers.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> anyhow::Result<Reply> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send_with(method, path, &all, Bytes::from(serde_json::to_vec(body)?))
            .await
    }

    /// A request with extra headers.
    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        match self.exchange(method, path, headers, body).await {
            Ok(reply) => Ok(reply),
            Err(request_error) => {
                if let Some(task) = self.task.take()
                    && let Ok(Ok(Err(conn_error))) =
                        tokio::time::timeout(std::time::Duration::from_secs(2), task).await
                {
                    return Err(anyhow::Error::new(conn_error).context(request_error));
                }
                Err(request_error)
            }
        }
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(body))?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                let (mut parts, body) = req.into_parts();
                parts.uri = path.parse()?;
                parts.headers.insert("host", "localhost".parse()?);
                // The previous exchange may still be finishing in the connection task.
                s.ready().await?;
                s.send_request(Request::from_parts(parts, body)).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The stable error code of an error body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// A benchmark setting: the environment variable `name` read as a number, or `default` when it
/// is unset or not one.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The path of the real `certgate` binary, built on first use.
///
/// `CERTGATE_BIN` names a binary to run instead (a benchmark comparing two builds of the
/// gateway with the same command).
pub fn certgate_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CERTGATE_BIN") {
            return PathBuf::from(bin);
        }
        // target/<profile>/deps/<test binary> -> target/<profile>/certgate
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "gateway", "--bin", "certgate"])
            .current_dir(workspace);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        assert!(
            build.status().unwrap().success(),
            "building certgate failed"
        );
        profile_dir.join("certgate")
    })
    .clone()
}

/// The command that runs `certgate serve` on `config`, stderr piped.
pub fn serve_command(config: &Path) -> Command {
    let mut cmd = Command::new(certgate_bin());
    cmd.args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// A running `certgate serve` process; killed if the test ends without stopping it.
pub struct Served {
    child: Option<std::process::Child>,
    /// The mTLS listener.
    pub api: SocketAddr,
    /// The operations listener.
    pub ops: SocketAddr,
}

impl Served {
    /// Starts `certgate serve` and waits until it logs its listening addresses.
    pub fn start(config: &Path) -> Served {
        Served::start_on(config, None)
    }

    /// Starts `certgate serve`, pinned to CPU `cpu` (with `taskset`) when one is given.
    pub fn start_on(config: &Path, cpu: Option<usize>) -> Served {
        use std::io::BufRead;
        let mut command = match cpu {
            None => serve_command(config),
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c")
                    .arg(cpu.to_string())
                    .arg(certgate_bin())
                    .args(["serve", "--config"])
                    .arg(config)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped());
                c
            }
        };
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.contains("certgate listening") {
                let field = |name: &str| -> SocketAddr {
                    let rest = line.split(&format!("{name}=")).nth(1).unwrap();
                    rest.split_whitespace().next().unwrap().parse().unwrap()
                };
                let (api, ops) = (field("api_addr"), field("ops_addr"));
                // Keep draining stderr so the child never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Served {
                    child: Some(child),
                    api,
                    ops,
                };
            }
        }
        let status = child.wait().unwrap();
        panic!("certgate serve did not start ({status})");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// Sends a signal (`-HUP`, `-TERM`, …).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// The exit status, once the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// SIGTERM, then waits; the process must exit successfully.
    pub fn stop(mut self) {
        self.signal("-TERM");
        let status = self.child.take().unwrap().wait().unwrap();
        assert!(status.success(), "certgate exited with {status}");
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Creates a seal of the calling department (`alg` `ES256` or `SM2SM3`) and returns its id.
pub async fn create_seal(conn: &mut Conn, alg: &str) -> String {
    let reply = conn
        .json(
            Method::POST,
            "/v1/seals",
            &[],
            &serde_json::json!({"seal_type": "公章", "alg": alg}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.json()["id"].as_str().unwrap().to_owned()
}

/// The body of a request to issue a business licence (营业执照) to `holder` with `seal`.
pub fn business_licence(seal: &str, holder: &str) -> serde_json::Value {
    serde_json::json!({
        "licence_type": BUSINESS,
        "holder_id": holder,
        "holder_name": "小米科技有限责任公司",
        "seal_id": seal,
        "fields": {"name": "小米科技有限责任公司", "legal_representative": "雷军", "registered_capital": 185000000, "established": "2010-03-03", "business_scope": "技术开发"}
    })
}

/// Issues a licence and returns the answer (asserting 201).
pub async fn issue_licence(conn: &mut Conn, body: &serde_json::Value) -> serde_json::Value {
    let reply = conn
        .json(Method::POST, "/v1/licences", &[], body)
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// Issues a certificate for each `(file stem, USCC)` and opens an HTTP/2 connection to `addr`
/// as that department, in order.
pub async fn connect_departments(
    pki: &TestPki,
    addr: SocketAddr,
    who: &[(&str, &str)],
) -> Vec<Conn> {
    let mut conns = Vec::with_capacity(who.len());
    for (name, id) in who {
        let identity = pki.department(name, id);
        conns.push(
            Client::new(&pki.ca_pem(), Some(&identity), Proto::H2)
                .connect(addr)
                .await
                .unwrap(),
        );
    }
    conns
}

/// A TCP relay in front of a server (PostgreSQL, say) that a test can cut and restore: cut,
/// every relayed connection is dropped and new ones are closed on accept.
pub struct Relay {
    /// Where the relay listens.
    pub addr: SocketAddr,
    down: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Relays 127.0.0.1:<free port> to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (d, c) = (down.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if d.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(relay.abort_handle());
            }
        });
        Relay {
            addr,
            down,
            connections,
            task,
        }
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Relays again.
    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// A small load generator over the fixtures' mTLS client.
pub mod load {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http::Method;

    use crate::Client;

    /// What one round of load measured.
    pub struct Round {
        /// Requests per second.
        pub rps: f64,
        /// Median latency.
        pub p50: Duration,
        /// 99th percentile latency.
        pub p99: Duration,
    }

    /// `requests` GETs of `path` over `conns` keep-alive connections of `client` to `addr`, each
    /// connection sending its share one after another; every answer must be 200.
    pub async fn round(
        client: &Client,
        addr: SocketAddr,
        path: &str,
        headers: &'static [(&'static str, &'static str)],
        conns: usize,
        requests: usize,
    ) -> Round {
        round_with(
            client,
            addr,
            Method::GET,
            path,
            headers,
            Bytes::new(),
            conns,
            requests,
        )
        .await
    }

    /// As [`round`], with any method and body.
    #[allow(clippy::too_many_arguments)]
    pub async fn round_with(
        client: &Client,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &'static [(&'static str, &'static str)],
        body: Bytes,
        conns: usize,
        requests: usize,
    ) -> Round {
        let mut open = Vec::new();
        for _ in 0..conns {
            open.push(client.connect(addr).await.unwrap());
        }
        let per_conn = requests / conns;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for mut conn in open {
            let (path, method, body) = (path.to_owned(), method.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_conn);
                for _ in 0..per_conn {
                    let t = Instant::now();
                    let reply = conn
                        .send_with(method.clone(), &path, headers, body.clone())
                        .await
                        .unwrap();
                    assert!(
                        reply.status.is_success(),
                        "{} {:?}",
                        reply.status,
                        reply.body
                    );
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        summarise(tasks, started).await
    }

    /// `total` full TLS handshakes (TCP connect, handshake with the client certificate, close)
    /// from `tasks` concurrent tasks; latency is per handshake. Use a client made with
    /// [`Client::full_handshakes`] so that nothing is resumed.
    pub async fn handshakes(
        client: &Client,
        addr: SocketAddr,
        tasks: usize,
        total: usize,
    ) -> Round {
        let per_task = total / tasks;
        let started = Instant::now();
        let mut running = Vec::new();
        for _ in 0..tasks {
            let client = client.clone();
            running.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    let tls = client.tls(addr).await.unwrap();
                    assert_ne!(
                        tls.get_ref().1.handshake_kind(),
                        Some(rustls::HandshakeKind::Resumed)
                    );
                    latencies.push(t.elapsed());
                    drop(tls);
                }
                latencies
            }));
        }
        summarise(running, started).await
    }

    async fn summarise(
        tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
        started: Instant,
    ) -> Round {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed();
        all.sort_unstable();
        let pct = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize];
        Round {
            rps: all.len() as f64 / elapsed.as_secs_f64(),
            p50: pct(0.50),
            p99: pct(0.99),
        }
    }
}

/// Runs the `certgate` command line and waits for it.
pub fn certgate(args: &[&str]) -> std::process::Output {
    Command::new(certgate_bin()).args(args).output().unwrap()
}

/// The request ids of every leaf in a stored log.
pub fn logged_request_ids(log: &StoredLog) -> std::collections::HashSet<String> {
    log.all()
        .into_iter()
        .filter_map(|(_, data)| {
            serde_json::from_slice::<serde_json::Value>(&data).unwrap()["request_id"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// A gateway's stored access log reached directly, past the gateway, as someone with write
/// access to the database would: for tests that tamper with it and check it is found out.
#[derive(Debug, Clone)]
pub enum StoredLog {
    /// The embedded log of a data directory: segment files in `access-log/`, or the SQLite
    /// file `access-log.db` of a log made before them.
    Embedded(PathBuf),
    /// The shared tables in a PostgreSQL schema.
    Postgres(std::sync::Arc<storage::PgPool>),
}

impl StoredLog {
    /// The log of a gateway with data directory `data` on the store `schema` guards (none: the
    /// embedded store).
    pub fn of(data: &Path, schema: &Option<storage::SchemaGuard>) -> StoredLog {
        match schema {
            Some(g) => StoredLog::Postgres(g.pool().clone()),
            None => StoredLog::Embedded(data.to_path_buf()),
        }
    }

    /// Runs one statement; `?1`-style parameters become `$1` on PostgreSQL, and table
    /// names `leaves`/`nodes` get PostgreSQL's `log_` prefix.
    fn exec(&self, sql: &str, seq: i64, data: Option<&[u8]>) {
        match self {
            StoredLog::Embedded(dir) => {
                let db = rusqlite::Connection::open(dir.join("access-log.db")).unwrap();
                let mut stmt = db.prepare(sql).unwrap();
                let n = stmt.parameter_count();
                match (n, data) {
                    (1, _) => stmt.execute(rusqlite::params![seq]).unwrap(),
                    (2, Some(d)) => stmt.execute(rusqlite::params![seq, d]).unwrap(),
                    _ => stmt.execute([]).unwrap(),
                };
            }
            StoredLog::Postgres(store) => {
                let sql = sql
                    .replace("?1", "$1")
                    .replace("?2", "$2")
                    .replace(" leaves", " log_leaves")
                    .replace(" nodes", " log_nodes");
                let store = store.clone();
                let data = data.map(<[u8]>::to_vec);
                std::thread::spawn(move || {
                    store
                        .with(|c| -> Result<(), storage::Error> {
                            let n = c.prepare(&sql)?.params().len();
                            match (n, &data) {
                                (1, _) => c.execute(&sql, &[&seq])?,
                                (2, Some(d)) => c.execute(&sql, &[&seq, d])?,
                                _ => c.execute(&sql, &[])?,
                            };
                            Ok(())
                        })
                        .unwrap()
                })
                .join()
                .unwrap();
            }
        }
    }

    /// Every stored leaf's bytes, by position.
    pub fn all(&self) -> Vec<(i64, Vec<u8>)> {
        match self {
            StoredLog::Embedded(dir) if self.segments().is_some() => {
                let mut all = Vec::new();
                let mut log = tlog::SegmentLog::open_read_only(&dir.join("access-log")).unwrap();
                tlog::LogDb::scan(&mut log, u64::MAX, &mut |l| {
                    all.push((l.seq, l.data.unwrap().to_vec()));
                    true
                })
                .unwrap();
                all
            }
            StoredLog::Embedded(dir) => {
                let db = rusqlite::Connection::open(dir.join("access-log.db")).unwrap();
                let mut stmt = db
                    .prepare("SELECT seq, data FROM leaves ORDER BY seq")
                    .unwrap();
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            StoredLog::Postgres(store) => {
                let store = store.clone();
                std::thread::spawn(move || {
                    store
                        .with(|c| -> Result<_, storage::Error> {
                            c.query("SELECT seq, data FROM log_leaves ORDER BY seq", &[])?
                                .iter()
                                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                                .collect()
                        })
                        .unwrap()
                })
                .join()
                .unwrap()
            }
        }
    }

    /// The bytes of leaf `seq`.
    pub fn get(&self, seq: i64) -> Vec<u8> {
        self.all()
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, d)| d)
            .unwrap()
    }

    /// The segment directory, when the log is in segment files.
    fn segments(&self) -> Option<PathBuf> {
        match self {
            StoredLog::Embedded(dir) if !dir.join("access-log.db").exists() => {
                Some(dir.join("access-log"))
            }
            _ => None,
        }
    }

    /// Writes `leaves` as the whole segment log, at consecutive positions, one frame each with
    /// a valid checksum (the frame format of `tlog::segments`), as someone with write access to
    /// the files could.
    fn rewrite(dir: &Path, leaves: &[Vec<u8>]) {
        use std::io::Write;
        let segments = dir.join("segments");
        for e in std::fs::read_dir(&segments).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let mut out = Vec::new();
        for (i, bytes) in leaves.iter().enumerate() {
            let mut raw = (bytes.len() as u32).to_le_bytes().to_vec();
            raw.extend_from_slice(bytes);
            let mut enc =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&raw).unwrap();
            let payload = enc.finish().unwrap();
            let mut crc = crc32fast::Hasher::new();
            crc.update(&(i as u64).to_le_bytes());
            crc.update(&1u32.to_le_bytes());
            crc.update(&(payload.len() as u32).to_le_bytes());
            crc.update(&payload);
            out.extend_from_slice(b"CGL1");
            out.extend_from_slice(&(i as u64).to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc.finalize().to_le_bytes());
            out.extend_from_slice(&payload);
        }
        std::fs::write(segments.join(format!("{:020}.seg", 0)), out).unwrap();
    }

    /// Changes the stored leaves with `change`, in segment files.
    fn edit_segments(&self, dir: &Path, change: impl FnOnce(&mut Vec<Vec<u8>>)) {
        let mut leaves: Vec<Vec<u8>> = self.all().into_iter().map(|(_, d)| d).collect();
        change(&mut leaves);
        StoredLog::rewrite(dir, &leaves);
    }

    /// Overwrites the bytes of leaf `seq`.
    pub fn put(&self, seq: i64, data: &[u8]) {
        if let Some(dir) = self.segments() {
            return self.edit_segments(&dir, |l| l[seq as usize] = data.to_vec());
        }
        self.exec(
            "UPDATE leaves SET data = ?2 WHERE seq = ?1",
            seq,
            Some(data),
        );
    }

    /// Deletes leaf `seq`.
    pub fn delete(&self, seq: i64) {
        if let Some(dir) = self.segments() {
            return self.edit_segments(&dir, |l| {
                l.remove(seq as usize);
            });
        }
        self.exec("DELETE FROM leaves WHERE seq = ?1", seq, None);
    }

    /// Puts leaf `seq` back.
    pub fn insert(&self, seq: i64, data: &[u8]) {
        if let Some(dir) = self.segments() {
            return self.edit_segments(&dir, |l| l.insert(seq as usize, data.to_vec()));
        }
        self.exec(
            "INSERT INTO leaves (seq, time_ms, outcome, data) VALUES (?1, 0, 'allowed', ?2)",
            seq,
            Some(data),
        );
    }

    /// Deletes every leaf from `seq` on, with their level-0 nodes (and, on PostgreSQL, sets
    /// the tree size back), as someone hiding the newest entries would.
    pub fn truncate(&self, seq: i64) {
        if let Some(dir) = self.segments() {
            self.edit_segments(&dir, |l| l.truncate(seq as usize));
            let nodes = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("nodes/0.bin"))
                .unwrap();
            nodes.set_len(seq as u64 * 32).unwrap();
            return;
        }
        self.exec("DELETE FROM leaves WHERE seq >= ?1", seq, None);
        self.exec("DELETE FROM nodes WHERE level = 0 AND idx >= ?1", seq, None);
        if let StoredLog::Postgres(_) = self {
            self.exec("UPDATE log_state SET size = ?1", seq, None);
        }
    }
}

/// The access log's verifier key, as an auditor reads it.
pub async fn log_key(auditor: &mut Conn) -> String {
    let reply = auditor.get("/v1/audit/log-key").await.unwrap();
    String::from_utf8(reply.body.to_vec())
        .unwrap()
        .trim()
        .to_owned()
}

/// Polls the latest checkpoint until it covers at least `size` leaves.
pub async fn checkpoint_covering(
    auditor: &mut Conn,
    key: &str,
    size: u64,
) -> (String, tlog::checkpoint::Checkpoint) {
    for _ in 0..100 {
        let reply = auditor.get("/v1/audit/checkpoint").await.unwrap();
        if reply.status == http::StatusCode::OK {
            let note = String::from_utf8(reply.body.to_vec()).unwrap();
            let cp = tlog::checkpoint::verify_note(&note, key).unwrap();
            if cp.size >= size {
                return (note, cp);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no checkpoint covering {size} leaves");
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.x), as another host.
pub async fn connect_from(
    from: &str,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(addr).await
}

/// Every entry of the log, paged through as an auditor.
pub async fn all_entries(auditor: &mut Conn) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("/v1/audit/entries?limit=1000&cursor={c}"),
            None => "/v1/audit/entries?limit=1000".to_owned(),
        };
        let page = auditor.get(&path).await.unwrap().json();
        out.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// Leaves of refused handshakes (their summaries) now in the log.
pub async fn handshake_summaries(auditor: &mut Conn) -> Vec<serde_json::Value> {
    let mut all = all_entries(auditor).await;
    all.retain(|e| e["kind"] == "handshakes");
    all
}
