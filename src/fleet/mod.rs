//! Skills across a fleet: the robot's inbox (an HTTP server inside the node that installs signed
//! bundles into the skill store and swaps them in), the fleet server (a catalog of bundles and a
//! registry of robots) and the push and upload clients. Requests carry a bearer token; what
//! they deliver is trusted only through the bundle's signature.

pub mod agent;
pub mod auth;
pub mod bucket;
pub mod channel;
pub mod client;
pub mod http;
pub mod inbox;
pub mod push;
pub mod server;

/// Why a fleet command or server could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] crate::file::FileError),
    /// A configuration file or argument is wrong; the message says how to fix it.
    #[error("{0}")]
    Config(String),
    /// A server could not start.
    #[error("cannot listen on {addr}: {source}; is another server using the port? choose another address")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A remote refused or failed the request.
    #[error("{0}")]
    Remote(String),
    /// A robot answered and refused the change; the message says why.
    #[error("refused ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The robot's reason.
        message: String,
    },
}
