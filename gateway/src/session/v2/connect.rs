//! The `connect` frame: the token of a v2 socket opened without one, so it
//! stays out of URLs and proxy logs. A refusal closes the socket with
//! 4000 + the HTTP status the same problem gets at the upgrade, and the
//! same reason text.

use crate::auth::{self, Permissions, Refusal};
use crate::session::context::SessionContext;
use hyper::StatusCode;
use pgws_protocol::close::CloseReason;
use pgws_protocol::v2::{self, Command};

/// The socket's permissions and the `connect`'s id (replied to when
/// present), or the close code and text.
pub fn accept(
    text: &str,
    ctx: &SessionContext,
) -> Result<(Permissions, Option<u64>), (CloseReason, String)> {
    match v2::parse(text) {
        Ok(Command::Connect { id, token }) => {
            ctx.metrics.v2.command("connect");
            let permissions = ctx
                .keys
                .verify(&token)
                .and_then(auth::permissions)
                .map_err(refused)?;
            Ok((permissions, id))
        }
        Ok(other) => Err((
            CloseReason::ConnectBadRequest,
            format!("Expected a connect frame first, got {}", other.name()),
        )),
        Err(e) => Err((
            CloseReason::ConnectBadRequest,
            format!("Expected a connect frame first: {e}"),
        )),
    }
}

fn refused(refusal: Refusal) -> (CloseReason, String) {
    let reason = match refusal.status() {
        StatusCode::UNAUTHORIZED => CloseReason::ConnectUnauthorized,
        StatusCode::FORBIDDEN => CloseReason::ConnectForbidden,
        _ => CloseReason::ConnectBadRequest,
    };
    (reason, refusal.to_string())
}
