//! Who is calling: the peer credentials of the connection (`SO_PEERCRED`), and the rule
//! of serve.md "Who may call": a call that changes anything needs uid 0, the daemon's
//! own uid, or membership of the socket's group.

use crate::error::ApiError;
use crate::Daemon;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The credentials of the process at the other end of the connection, as the kernel
/// recorded them when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its user ID.
    pub uid: u32,
    /// Its primary group ID.
    pub gid: u32,
    /// Its PID, when the kernel gave one.
    pub pid: Option<i32>,
}

/// What the daemon allows to change things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The daemon's own uid.
    pub daemon_uid: u32,
    /// The socket's group.
    pub socket_gid: u32,
}

impl Access {
    /// The daemon's own uid, and its own group as the socket's group.
    pub fn of_this_process() -> Access {
        Access {
            daemon_uid: nix::unistd::geteuid().as_raw(),
            socket_gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// Whether `peer` may change anything: uid 0, the daemon's uid, the socket's group as
    /// its primary group, or a member of that group in the group database.
    pub fn may_change(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.daemon_uid || peer.gid == self.socket_gid {
            return true;
        }
        let gid = nix::unistd::Gid::from_raw(self.socket_gid);
        let uid = nix::unistd::Uid::from_raw(peer.uid);
        match (
            nix::unistd::Group::from_gid(gid),
            nix::unistd::User::from_uid(uid),
        ) {
            (Ok(Some(group)), Ok(Some(user))) => group.mem.contains(&user.name),
            _ => false,
        }
    }
}

/// Whether a request of `method` changes anything (every method but `GET` and `HEAD`).
pub fn changes_anything(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// The middleware: refuses a changing request of a peer that may not change anything
/// (403), or of a connection with no known peer; refuses every request while the daemon
/// shuts down (503).
pub async fn authorize(State(daemon): State<Arc<Daemon>>, req: Request, next: Next) -> Response {
    if daemon.is_shutting_down() {
        return ApiError::unavailable("dms serve is shutting down; retry once it is back")
            .into_response();
    }
    if changes_anything(req.method()) {
        let peer = req.extensions().get::<Peer>().copied();
        let allowed = match peer {
            Some(p) => {
                let access = daemon.access;
                tokio::task::spawn_blocking(move || access.may_change(&p))
                    .await
                    .unwrap_or(false)
            }
            None => false,
        };
        if !allowed {
            let who = peer.map_or("an unknown peer".to_owned(), |p| {
                format!("uid {} (gid {})", p.uid, p.gid)
            });
            return ApiError::forbidden(format!(
                "{who} may not change anything: {} needs uid 0, the daemon's uid {}, or \
                 membership of the socket's group (gid {}); GET requests are open",
                req.method(),
                daemon.access.daemon_uid,
                daemon.access.socket_gid
            ))
            .into_response();
        }
    }
    next.run(req).await
}
