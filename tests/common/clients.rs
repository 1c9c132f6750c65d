//! One generated client per service on a test server's channel, and the
//! requests most tests build the same way: a data system's registration, a
//! privacy request filed and verified, a worker's claim. A test that needs
//! another shape starts from these with `..builder(..)`.
use privacy_records::proto::audit_service_client::AuditServiceClient;
use privacy_records::proto::consent_service_client::ConsentServiceClient;
use privacy_records::proto::data_system_service_client::DataSystemServiceClient;
use privacy_records::proto::privacy_request_service_client::PrivacyRequestServiceClient;
use privacy_records::proto::retention_service_client::RetentionServiceClient;
use privacy_records::proto::{
    self, ClaimTasksRequest, CompleteTaskRequest, CreatePrivacyRequestRequest, DataAction,
    DataSystem, PrivacyRequest, RegisterDataSystemRequest, RequestType, Task, TaskResult,
    VerifyPrivacyRequestIdentityRequest, data_system,
};
use tonic::transport::Channel;

use super::{TestServer, request_id};

/// A client per service, all on one channel.
#[derive(Clone)]
pub struct Clients {
    pub consent: ConsentServiceClient<Channel>,
    pub requests: PrivacyRequestServiceClient<Channel>,
    pub systems: DataSystemServiceClient<Channel>,
    pub retention: RetentionServiceClient<Channel>,
    pub audit: AuditServiceClient<Channel>,
}

impl TestServer {
    /// A client per service on a new channel to this server.
    pub fn clients(&self) -> Clients {
        Clients::on(self.channel())
    }
}

impl Clients {
    pub fn on(channel: Channel) -> Clients {
        Clients {
            consent: ConsentServiceClient::new(channel.clone()),
            requests: PrivacyRequestServiceClient::new(channel.clone()),
            systems: DataSystemServiceClient::new(channel.clone()),
            retention: RetentionServiceClient::new(channel.clone()),
            audit: AuditServiceClient::new(channel),
        }
    }

    /// Registers a data system; fails the test if the server refuses.
    pub async fn register(&mut self, request: RegisterDataSystemRequest) -> DataSystem {
        self.systems
            .register_data_system(request)
            .await
            .expect("register")
            .into_inner()
    }

    /// Verifies the requester of `name` by account login, so its tasks go out.
    pub async fn verify(&mut self, name: String) -> PrivacyRequest {
        self.requests
            .verify_privacy_request_identity(VerifyPrivacyRequestIdentityRequest {
                name,
                request_id: request_id(),
                method: "account login".into(),
                agent_evidence_reference: String::new(),
            })
            .await
            .expect("verify")
            .into_inner()
    }

    /// Files a request and verifies the requester.
    pub async fn file_and_verify(
        &mut self,
        request: CreatePrivacyRequestRequest,
    ) -> PrivacyRequest {
        let created = self
            .requests
            .create_privacy_request(request)
            .await
            .expect("create")
            .into_inner();
        self.verify(created.name).await
    }

    /// Completes a claimed task: one record affected, nothing more to say.
    pub async fn complete(&mut self, task: &Task) -> Task {
        self.systems
            .complete_task(CompleteTaskRequest {
                name: task.name.clone(),
                request_id: request_id(),
                lease_id: task.lease_id.clone(),
                result: Some(TaskResult {
                    records_affected: 1,
                    ..Default::default()
                }),
            })
            .await
            .expect("complete")
            .into_inner()
    }

    /// The tasks a claim hands out.
    pub async fn claim(&mut self, request: ClaimTasksRequest) -> Vec<Task> {
        self.systems
            .claim_tasks(request)
            .await
            .expect("claim")
            .into_inner()
            .tasks
    }
}

/// The registration of an internal US system named and displayed as `id`.
pub fn register_system(
    id: &str,
    categories: &[&str],
    actions: &[DataAction],
) -> RegisterDataSystemRequest {
    RegisterDataSystemRequest {
        request_id: request_id(),
        data_system: Some(DataSystem {
            id: id.into(),
            display_name: id.into(),
            kind: data_system::Kind::Internal as i32,
            categories: categories.iter().map(|c| c.to_string()).collect(),
            country: "US".into(),
            actions: actions.iter().map(|a| *a as i32).collect(),
            ..Default::default()
        }),
    }
}

/// A US-CA request of type `t` from a web form.
pub fn file_request(subject: &str, t: RequestType) -> CreatePrivacyRequestRequest {
    CreatePrivacyRequestRequest {
        request_id: request_id(),
        subject_id: subject.into(),
        request_type: t as i32,
        jurisdiction: "US-CA".into(),
        channel: proto::privacy_request::Channel::WebForm as i32,
        ..Default::default()
    }
}

/// A claim of up to 10 of `system`'s tasks by `<system>-worker` for 60 s.
pub fn claim(system: &str) -> ClaimTasksRequest {
    ClaimTasksRequest {
        request_id: request_id(),
        data_system: format!("dataSystems/{system}"),
        worker: format!("{system}-worker"),
        max_tasks: 10,
        lease_seconds: 60,
    }
}
