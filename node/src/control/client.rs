//! The CLI's side of the control API: [`ControlClient`], one code path for
//! the daemon and the one-job peer alike.

use std::path::Path;

use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};
use vmail_proto::control_pb::{self as pb, control_client, control_server};

use crate::peer::Session;

use super::{ControlError, ControlService, MAX_CONTROL_MESSAGE, check_len};

/// The CLI's handle on a peer.
#[derive(Debug, Clone)]
pub struct ControlClient {
    rpc: control_client::ControlClient<Channel>,
    channel: Channel,
}

impl ControlClient {
    /// Connects to the peer serving `socket`.
    pub async fn connect(socket: &Path) -> Result<Self, ControlError> {
        check_len(socket)?;
        if !socket.exists() {
            return Err(ControlError::NotRunning(socket.to_owned()));
        }
        let path = socket.to_owned();
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|_| ControlError::NotRunning(socket.to_owned()))?;
        Ok(Self {
            rpc: control_client::ControlClient::new(channel.clone())
                .max_decoding_message_size(MAX_CONTROL_MESSAGE)
                .max_encoding_message_size(MAX_CONTROL_MESSAGE),
            channel,
        })
    }

    /// Whether the peer's health service reports its control API serving.
    pub async fn serving(&self) -> Result<bool, ControlError> {
        use tonic::server::NamedService;
        use tonic_health::pb::health_check_response::ServingStatus;
        let request = tonic_health::pb::HealthCheckRequest {
            service: control_server::ControlServer::<ControlService>::NAME.to_owned(),
        };
        let status = tonic_health::pb::health_client::HealthClient::new(self.channel.clone())
            .check(request)
            .await?
            .into_inner()
            .status();
        Ok(status == ServingStatus::Serving)
    }

    /// The peer's status.
    pub async fn status(&mut self) -> Result<pb::StatusResponse, ControlError> {
        Ok(self.rpc.status(pb::StatusRequest {}).await?.into_inner())
    }

    /// The SIP front's registrations, subscriptions, calls and lamp.
    pub async fn sip_status(&mut self) -> Result<pb::SipStatusResponse, ControlError> {
        Ok(self
            .rpc
            .sip_status(pb::SipStatusRequest {})
            .await?
            .into_inner())
    }

    /// Looks up an object's providers in the DHT, with what it cost.
    pub async fn find_providers(
        &mut self,
        identifier: [u8; 32],
    ) -> Result<pb::FindProvidersResponse, ControlError> {
        let req = pb::FindProvidersRequest {
            identifier: identifier.to_vec(),
        };
        Ok(self.rpc.find_providers(req).await?.into_inner())
    }

    /// Hands the peer a login.
    pub async fn set_session(&mut self, s: &Session) -> Result<(), ControlError> {
        self.rpc.set_session(pb::SetSessionRequest::from(s)).await?;
        Ok(())
    }

    /// Leaves a voicemail, reporting progress.
    pub async fn leave(
        &mut self,
        req: pb::LeaveRequest,
        mut on_progress: impl FnMut(pb::Progress),
    ) -> Result<pb::LeaveDone, ControlError> {
        let mut events = self.rpc.leave(req).await?.into_inner();
        while let Some(e) = events.message().await? {
            match e.event {
                Some(pb::leave_event::Event::Progress(p)) => on_progress(p),
                Some(pb::leave_event::Event::Done(d)) => return Ok(d),
                None => {}
            }
        }
        Err(ControlError::Protocol(
            "leave ended without a result".into(),
        ))
    }

    /// The waiting voicemails.
    pub async fn inbox(&mut self) -> Result<Vec<pb::InboxEntry>, ControlError> {
        Ok(self
            .rpc
            .inbox(pb::InboxRequest {})
            .await?
            .into_inner()
            .voicemails)
    }

    /// Fetches and decrypts a voicemail, reporting progress.
    pub async fn fetch(
        &mut self,
        voicemail_id: [u8; 16],
        mut on_progress: impl FnMut(pb::Progress),
    ) -> Result<(Vec<u8>, pb::FetchDone), ControlError> {
        let mut events: Streaming<pb::FetchEvent> = self
            .rpc
            .fetch(pb::FetchRequest {
                voicemail_id: voicemail_id.to_vec(),
            })
            .await?
            .into_inner();
        let mut content = Vec::new();
        while let Some(e) = events.message().await? {
            match e.event {
                Some(pb::fetch_event::Event::Progress(p)) => on_progress(p),
                Some(pb::fetch_event::Event::Chunk(c)) => content.extend_from_slice(&c),
                Some(pb::fetch_event::Event::Done(d)) => return Ok((content, d)),
                None => {}
            }
        }
        Err(ControlError::Protocol(
            "fetch ended without a result".into(),
        ))
    }

    /// Recalls a voicemail the user left; what the delete order removed.
    pub async fn recall(
        &mut self,
        voicemail_id: [u8; 16],
    ) -> Result<pb::RecallResponse, ControlError> {
        Ok(self
            .rpc
            .recall(pb::RecallRequest {
                voicemail_id: voicemail_id.to_vec(),
            })
            .await?
            .into_inner())
    }

    /// Acks a fetched voicemail at the auth server: whether it was the
    /// last recipient, and what the delete order removed.
    pub async fn ack(&mut self, voicemail_id: [u8; 16]) -> Result<pb::AckResponse, ControlError> {
        Ok(self
            .rpc
            .ack(pb::AckRequest {
                voicemail_id: voicemail_id.to_vec(),
            })
            .await?
            .into_inner())
    }
}
