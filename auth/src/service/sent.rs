//! What a sender sees and does after a deposit: the receipts of the
//! voicemail they left (ListSent), and the recall of one that not every
//! recipient has acked yet (Recall).
//!
//! A recall ends the voicemail the way the last ack does: it leaves every
//! inbox, its session key is erased, and the group signs a delete order
//! for its shards (reason `Recalled`), which the sender's peer hands to the
//! holders. The group cannot unsay what a recipient already fetched, so
//! those who acked stay `Delivered` on the receipt.

use vmail_proto::grant::DeleteOrder;

use super::AuthService;
use super::error::{AuthError, invalid};
use crate::cluster::{Command, Reply};
use crate::store::{RecallOutcome, Receipt, Session, VoicemailId};

/// Most receipts one ListSent returns, newest first.
pub const MAX_LIST_SENT: usize = 1000;

/// What a successful recall hands the sender's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recalled {
    /// The signed order to delete the voicemail's shards (none only for a
    /// voicemail deposited without a storage grant, before schema 3).
    pub delete_order: Option<DeleteOrder>,
    /// The voicemail's locator, to find the shards.
    pub locator: Vec<u8>,
}

impl AuthService {
    /// The voicemail the caller left whose receipt is still kept (until a
    /// week after its expiry), newest first, at most [`MAX_LIST_SENT`].
    pub async fn list_sent(&self, session: &Session) -> Result<Vec<Receipt>, AuthError> {
        let user = session.username.clone();
        self.db(move |s| s.sent(&user, MAX_LIST_SENT)).await
    }

    /// Withdraws voicemail `id`, which the caller sent, from every
    /// recipient who has not acked it.
    pub async fn recall(&self, session: &Session, id: &[u8]) -> Result<Recalled, AuthError> {
        self.charge_write(&session.username)?;
        let id: VoicemailId = id
            .try_into()
            .map_err(|_| invalid("voicemail_id", format!("{} bytes, expected 16", id.len())))?;
        let reply = self
            .propose(Command::Recall {
                sender: session.username.clone(),
                id,
                now: self.now(),
            })
            .await?;
        let Reply::Recalled(outcome) = reply else {
            return Err(AuthError::Apply(format!(
                "unexpected reply {reply:?} to a recall"
            )));
        };
        match outcome {
            RecallOutcome::Recalled {
                locator,
                mut delete_order,
            } => {
                self.co_sign_order(&mut delete_order).await;
                tracing::info!(
                    sender = %session.username,
                    id = %hex::encode(id),
                    delete_order = ?delete_order.as_ref().map(|o| o.serial),
                    "recall"
                );
                Ok(Recalled {
                    delete_order,
                    locator,
                })
            }
            RecallOutcome::NotSender => Err(AuthError::NotSender(hex::encode(id))),
            RecallOutcome::Gone(why) => Err(AuthError::NothingToRecall {
                id: hex::encode(id),
                why,
            }),
        }
    }
}
