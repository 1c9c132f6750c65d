//! `privacy.v1.PrivacyRequestService`: the jurisdiction rules, read from the
//! compiled-in table (`crate::rules`). Read-only, no database.
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::proto;
use crate::proto::privacy_request_service_server::PrivacyRequestService;
use crate::rules::{self, Cite, Cited, JurisdictionRules, Period, RequestType, Resolution, Unit};

pub struct PrivacyRequestApi {
    #[allow(dead_code)]
    pool: sqlx::PgPool,
    #[allow(dead_code)]
    settings: crate::config::RequestSettings,
}

impl PrivacyRequestApi {
    pub fn new(pool: sqlx::PgPool, settings: crate::config::RequestSettings) -> Self {
        Self { pool, settings }
    }
}

fn period(p: Period) -> proto::Period {
    proto::Period {
        amount: p.amount,
        unit: match p.unit {
            Unit::CalendarDays => proto::PeriodUnit::CalendarDays,
            Unit::BusinessDays => proto::PeriodUnit::BusinessDays,
            Unit::Months => proto::PeriodUnit::Months,
        } as i32,
    }
}

fn citation(c: Cite<'_>) -> proto::Citation {
    proto::Citation {
        source: c.source.to_owned(),
        confidence: c.confidence.as_str().to_owned(),
        conservative: c.conservative,
        note: c.note.unwrap_or_default().to_owned(),
    }
}

/// The proto enum value of a request type: its table key in upper case.
fn request_type(t: RequestType) -> i32 {
    proto::RequestType::from_str_name(&t.as_str().to_ascii_uppercase()).map_or(0, |v| v as i32)
}

fn date(d: chrono::NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn rules_to_proto(
    r: &JurisdictionRules,
    requested: &str,
    version: &str,
) -> proto::JurisdictionRules {
    let request_types = RequestType::ALL
        .iter()
        .map(|&t| {
            let deadline = r.deadline_for(t);
            proto::RequestTypeRules {
                request_type: request_type(t),
                statutory: deadline.statutory,
                right_since: r
                    .right(t)
                    .and_then(|g| g.since)
                    .map(date)
                    .unwrap_or_default(),
                response_deadline: Some(period(deadline.period)),
                extension: deadline.extension_period().map(period),
                extension_notice_required: deadline.extension.is_some_and(|e| e.notice_required),
                verification_required: r.verification_required(t),
                agent_may_file: r.agent_may_file(t),
                deadline_citation: Some(citation(deadline.cite)),
            }
        })
        .collect();
    let appeal = &r.appeal;
    proto::JurisdictionRules {
        name: format!("jurisdictionRules/{}", r.code()),
        code: r.code().to_owned(),
        requested_code: requested.to_owned(),
        display_name: r.name.clone(),
        law: r.law.clone(),
        effective_date: date(r.effective.date),
        request_types,
        appeal: Some(proto::AppealRules {
            exists: appeal.exists,
            deadline: appeal.deadline.map(period),
            regulator_contact_required: appeal.regulator_contact_required,
            citation: Some(citation(appeal.cite())),
        }),
        free_requests_per_12_months: r.free_requests.requests_per_12_months.unwrap_or(0),
        universal_opt_out_recognized: r.universal_opt_out.recognized,
        universal_opt_out_since: r.universal_opt_out.since.map(date).unwrap_or_default(),
        clock_pauses: r
            .clock_pauses
            .iter()
            .map(|p| p.reason.as_str().to_owned())
            .collect(),
        notes: r.notes.clone().unwrap_or_default(),
        table_version: version.to_owned(),
    }
}

/// Parses `jurisdictionRules/{code}`: a code of 2-10 letters, digits and '-'.
fn parse_name(name: &str) -> Result<String, String> {
    let code = name
        .strip_prefix("jurisdictionRules/")
        .ok_or("must be \"jurisdictionRules/{code}\", e.g. \"jurisdictionRules/US-CA\"")?;
    let valid = (2..=10).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return Err("the code must be 2-10 letters, digits or '-', like US-CA or EU".into());
    }
    Ok(code.to_ascii_uppercase())
}

#[tonic::async_trait]
impl PrivacyRequestService for PrivacyRequestApi {
    async fn get_jurisdiction_rules(
        &self,
        request: Request<proto::GetJurisdictionRulesRequest>,
    ) -> Result<Response<proto::JurisdictionRules>, Status> {
        let code = parse_name(&request.get_ref().name).map_err(|e| Error::invalid("name", e))?;
        let table = rules::table().map_err(|e| Error::Internal(e.to_string()))?;
        let lookup = table.lookup(&code);
        let requested = match lookup.resolution {
            Resolution::Exact => String::new(),
            Resolution::MemberState | Resolution::Default => code,
        };
        Ok(Response::new(rules_to_proto(
            lookup.rules,
            &requested,
            table.version(),
        )))
    }

    async fn list_jurisdiction_rules(
        &self,
        _request: Request<proto::ListJurisdictionRulesRequest>,
    ) -> Result<Response<proto::ListJurisdictionRulesResponse>, Status> {
        let table = rules::table().map_err(|e| Error::Internal(e.to_string()))?;
        let version = table.version();
        let jurisdiction_rules = table
            .entries()
            .chain(std::iter::once(table.defaults()))
            .map(|r| rules_to_proto(r, "", version))
            .collect();
        Ok(Response::new(proto::ListJurisdictionRulesResponse {
            jurisdiction_rules,
            table_version: version.to_owned(),
        }))
    }
    async fn create_privacy_request(
        &self,
        _: Request<proto::CreatePrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn get_privacy_request(
        &self,
        _: Request<proto::GetPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn list_privacy_requests(
        &self,
        _: Request<proto::ListPrivacyRequestsRequest>,
    ) -> Result<Response<proto::ListPrivacyRequestsResponse>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn verify_privacy_request_identity(
        &self,
        _: Request<proto::VerifyPrivacyRequestIdentityRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn extend_privacy_request(
        &self,
        _: Request<proto::ExtendPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn hold_privacy_request(
        &self,
        _: Request<proto::HoldPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn resume_privacy_request(
        &self,
        _: Request<proto::ResumePrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn deny_privacy_request(
        &self,
        _: Request<proto::DenyPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn cancel_privacy_request(
        &self,
        _: Request<proto::CancelPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn complete_privacy_request(
        &self,
        _: Request<proto::CompletePrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn appeal_privacy_request(
        &self,
        _: Request<proto::AppealPrivacyRequestRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn decide_appeal(
        &self,
        _: Request<proto::DecideAppealRequest>,
    ) -> Result<Response<proto::PrivacyRequest>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn get_access_package(
        &self,
        _: Request<proto::GetAccessPackageRequest>,
    ) -> Result<Response<proto::AccessPackage>, Status> {
        Err(Status::unimplemented("not yet"))
    }
    async fn get_request_metrics(
        &self,
        _: Request<proto::GetRequestMetricsRequest>,
    ) -> Result<Response<proto::RequestMetrics>, Status> {
        Err(Status::unimplemented("not yet"))
    }
}
