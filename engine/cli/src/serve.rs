//! `airlock serve`: published trees and the publish API over HTTP.

use crate::exit;
use std::net::SocketAddr;
use std::path::Path;

/// What `airlock serve` asks for.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port (printed on stderr).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
}

/// Binds the admin socket, replacing one left by a process that died:
/// the caller holds the state directory's lock, so nothing else is
/// behind it.
pub(crate) fn admin_listener(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = socket.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    tokio::net::UnixListener::bind(socket)
        .map_err(|e| anyhow::anyhow!("cannot create the admin socket `{}`: {e}", socket.display()))
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn serve(state_dir: &Path, policy: Option<&Path>, args: ServeArgs) -> anyhow::Result<u8> {
    let Some(policy) = policy else {
        eprintln!("error: `airlock serve` needs the admin policy that names its publish targets");
        eprintln!("hint: pass `--policy FILE` or set AIRLOCK_POLICY; see the book's publishing guide");
        return Ok(exit::USAGE);
    };
    let Some(loaded) = crate::policy::load(policy)? else { return Ok(exit::FAILED) };
    let store = crate::tokens::open(state_dir)?;
    let names: Vec<String> = loaded.targets.iter().map(|t| t.name().to_owned()).collect();
    let users = crate::policy::users(&loaded.policy);
    let app = std::sync::Arc::new(airlock_server::App::new(store, loaded.targets).with_users(users));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on `{}`: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    // Token management while the server holds the state: a socket in a
    // directory only this user may enter (see airlock_server::admin).
    let socket = airlock_server::admin::socket_path(state_dir);
    let admin = admin_listener(&socket)?;
    eprintln!(
        "serving {} on http://{addr}/ (Ctrl-C stops)",
        if names.is_empty() { "no targets".into() } else { names.join(", ") }
    );
    let shutdown = airlock_runner::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminated => {}
        }
        stop.cancel();
    });
    let admin = tokio::spawn(airlock_server::serve_admin(admin, app.clone(), shutdown.clone()));
    let served = airlock_server::serve(listener, app, shutdown.clone()).await;
    shutdown.cancel();
    let _ = admin.await;
    let _ = std::fs::remove_file(&socket);
    served?;
    eprintln!("stopped");
    Ok(exit::OK)
}
