//! The floor under any gateway built on hyper and tokio: a bare reverse proxy with the same
//! crates, runtime and connection pool as `hookyard run`, that only forwards each request to one
//! upstream and answers with its response. No verification, routing, signing, store or metrics.
//! `bench/e2e.sh` runs it as the `hyper-proxy` scenario, beside nginx, so the cost of Hookyard's
//! own work can be told apart from the cost of the HTTP stack.
//!
//!   cargo build --release --example hyper_proxy
//!   target/release/examples/hyper_proxy 127.0.0.1:18083 http://127.0.0.1:18091

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Upstream = Client<HttpConnector, Full<Bytes>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: hyper_proxy LISTEN_ADDR UPSTREAM_BASE_URL".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: Uri = upstream.parse()?;
    // one worker, like `HOOKYARD_WORKER_THREADS=1 hookyard run` in the benchmark
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening on {}", listener.local_addr()?);
        let client: Upstream = Client::builder(TokioExecutor::new()).build_http();
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

async fn forward(client: Upstream, upstream: Uri, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{}{}", upstream.to_string().trim_end_matches('/'), path).parse() else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    parts.uri = uri;
    parts.headers.remove(hyper::header::HOST);
    let Ok(resp) = client.request(Request::from_parts(parts, Full::new(body))).await else {
        return Ok(status(StatusCode::BAD_GATEWAY));
    };
    let (parts, body) = resp.into_parts();
    match body.collect().await {
        Ok(b) => Ok(Response::from_parts(parts, Full::new(b.to_bytes()))),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}
