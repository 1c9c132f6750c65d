//! `privacy.v1.DataSystemService`. (Being built.)
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::proto;
use crate::proto::data_system_service_server::DataSystemService;

pub struct DataSystemApi {
    #[allow(dead_code)]
    pool: PgPool,
}

impl DataSystemApi {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn todo() -> Status {
    Status::unimplemented("not yet")
}

#[tonic::async_trait]
impl DataSystemService for DataSystemApi {
    async fn register_data_system(
        &self,
        _: Request<proto::RegisterDataSystemRequest>,
    ) -> Result<Response<proto::DataSystem>, Status> {
        Err(todo())
    }
    async fn get_data_system(
        &self,
        _: Request<proto::GetDataSystemRequest>,
    ) -> Result<Response<proto::DataSystem>, Status> {
        Err(todo())
    }
    async fn list_data_systems(
        &self,
        _: Request<proto::ListDataSystemsRequest>,
    ) -> Result<Response<proto::ListDataSystemsResponse>, Status> {
        Err(todo())
    }
    async fn claim_tasks(
        &self,
        _: Request<proto::ClaimTasksRequest>,
    ) -> Result<Response<proto::ClaimTasksResponse>, Status> {
        Err(todo())
    }
    async fn renew_task_lease(
        &self,
        _: Request<proto::RenewTaskLeaseRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        Err(todo())
    }
    async fn complete_task(
        &self,
        _: Request<proto::CompleteTaskRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        Err(todo())
    }
    async fn fail_task(
        &self,
        _: Request<proto::FailTaskRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        Err(todo())
    }
    async fn get_task(
        &self,
        _: Request<proto::GetTaskRequest>,
    ) -> Result<Response<proto::Task>, Status> {
        Err(todo())
    }
    async fn list_tasks(
        &self,
        _: Request<proto::ListTasksRequest>,
    ) -> Result<Response<proto::ListTasksResponse>, Status> {
        Err(todo())
    }
    async fn record_disclosure(
        &self,
        _: Request<proto::RecordDisclosureRequest>,
    ) -> Result<Response<proto::Disclosure>, Status> {
        Err(todo())
    }
    async fn get_disclosure_report(
        &self,
        _: Request<proto::GetDisclosureReportRequest>,
    ) -> Result<Response<proto::DisclosureReport>, Status> {
        Err(todo())
    }
}
