//! [`FuseConn`]: the FUSE connection of one recorded mount, as a handle its [`Mounts`]
//! implementation made ([`Mounts::fuse_conn`]).
//!
//! [`Mounts`]: crate::Mounts
//! [`Mounts::fuse_conn`]: crate::Mounts::fuse_conn

use std::fmt;
use std::io;

/// What a [`FuseConn`] does, by implementation: the Linux one holds a descriptor of the
/// connection's `/sys/fs/fuse/connections/N` directory, the fake one a reference into
/// its table. Implement it for a [`crate::Mounts`] of your own.
pub trait ConnHandle: fmt::Debug + Send + Sync {
    /// Whether the connection still exists (its super block lives).
    fn exists(&self) -> bool;
    /// Aborts the connection: every pending and future request fails. `Ok(false)` when
    /// it no longer exists.
    fn abort(&self) -> io::Result<bool>;
}

/// The FUSE connection of one recorded mount, taken while that mount was proven present
/// ([`crate::Mounts::fuse_conn`]), so acting on it can only ever reach that mount's
/// connection, even after the mount is gone and its number was given to another.
#[derive(Debug)]
pub struct FuseConn {
    name: String,
    handle: Box<dyn ConnHandle>,
}

impl FuseConn {
    /// A connection named `name` (its number, the directory name in
    /// `/sys/fs/fuse/connections`), acted on through `handle`.
    pub fn new(name: impl Into<String>, handle: Box<dyn ConnHandle>) -> FuseConn {
        FuseConn {
            name: name.into(),
            handle,
        }
    }

    /// The connection's number (its directory name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the connection still exists (its super block lives).
    pub fn exists(&self) -> bool {
        self.handle.exists()
    }

    /// Aborts the connection: every pending and future request fails. `Ok(false)` when
    /// it no longer exists.
    pub fn abort(&self) -> io::Result<bool> {
        self.handle.abort()
    }
}
