//! The saved models' part of the data API: what ML recipes' activities upload and download.
//!
//! - `PUT …/models/{model}/staged`: a training's new version, as a tar of its folder (MLflow's
//!   layout), staged until the activity succeeds; only the recipe that writes the model.
//! - `GET …/models/{model}/versions/{version}`: a version (a number, or `active`) as a tar; the
//!   recipes that read the model, and users who may read the project.
//! - `POST …/models/{model}/evaluations`: an evaluation (a JSON object), appended to the model's
//!   evaluations when the activity succeeds; only the recipes that read the model.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::data_api::{ChannelReader, Principal, blocking_body};
use crate::{ApiError, ApiPath, AppState, StrictJson};

const TAR: &str = "application/x-tar";

fn not_found(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// 404 unless the project declares the saved model.
fn known_model(state: &AppState, project: &str, model: &str) -> Result<(), ApiError> {
    let home = state.engine.home();
    let p = home
        .projects
        .get(project)
        .ok_or_else(|| not_found(format!("unknown project `{project}`")))?;
    if !p.models.contains_key(model) {
        return Err(not_found(format!(
            "unknown saved model `{model}` in project `{project}`"
        )));
    }
    Ok(())
}

/// The activity an upload belongs to: users never write models (their versions come from
/// training recipes), activities only the models their recipe declares.
fn activity_only(
    principal: &Principal,
    state: &AppState,
    project: &str,
    model: &str,
    write: bool,
    what: &str,
) -> Result<String, ApiError> {
    if let Principal::User(_) = principal {
        return Err(ApiError::forbidden(format!(
            "{what} come from ML recipes' activities, not from users"
        )));
    }
    match principal.allow_named(state, project, "saved model", model, write)? {
        Some(id) => Ok(id.stage()),
        None => Err(ApiError::forbidden(format!(
            "{what} come from ML recipes' activities"
        ))),
    }
}

pub async fn stage_version(
    State(s): State<AppState>,
    principal: Principal,
    ApiPath((project, model)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let stage = activity_only(
        &principal,
        &s,
        &project,
        &model,
        true,
        "saved model versions",
    )?;
    known_model(&s, &project, &model)?;
    require_tar(&headers, "a version")?;
    let reader = body_reader(body);
    let data = s.clone();
    let (p, m) = (project.clone(), model.clone());
    let files =
        tokio::task::spawn_blocking(move || data.data.models.stage_tar(&p, &m, &stage, reader))
            .await
            .map_err(|e| ApiError::internal("the upload failed", &e))?
            .map_err(upload_error)?;
    Ok(Json(
        json!({"project": project, "model": model, "files": files, "staged": true}),
    ))
}

/// 415 unless the upload says it is a tar (`what`: what it should hold, for the message).
pub(crate) fn require_tar(headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    match crate::media_type(headers)?.as_deref() {
        Some(TAR) => Ok(()),
        other => Err(ApiError::unsupported_media_type(format!(
            "{}: send {what} as `Content-Type: {TAR}` (a tar of its folder)",
            other.map_or("missing Content-Type".to_string(), |t| format!(
                "unsupported Content-Type `{t}`"
            ))
        ))),
    }
}

/// A blocking reader over an upload's body (for unpacking it off the async threads).
pub(crate) fn body_reader(body: Body) -> ChannelReader {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(8);
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            if tx.send(chunk.map_err(|e| e.to_string())).await.is_err() {
                break;
            }
        }
    });
    ChannelReader {
        rx,
        current: Bytes::new(),
    }
}

/// A refused or broken upload is the client's (400); a failing disk the server's, without its
/// paths.
fn upload_error(e: capstan_data::DataError) -> ApiError {
    match e {
        capstan_data::DataError::Io { ref source, .. }
            if source.kind() == std::io::ErrorKind::InvalidData
                || source.kind() == std::io::ErrorKind::InvalidInput
                || source.kind() == std::io::ErrorKind::UnexpectedEof
                || source.kind() == std::io::ErrorKind::Other =>
        {
            ApiError::bad_request(format!(
                "the upload is not a model's folder as a tar: {source}"
            ))
        }
        other => ApiError::from(other),
    }
}

pub async fn download_version(
    State(s): State<AppState>,
    principal: Principal,
    ApiPath((project, model, version)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    principal.allow_named(&s, &project, "saved model", &model, false)?;
    known_model(&s, &project, &model)?;
    let models = &s.data.models;
    let number = match version.as_str() {
        "active" => models
            .active(&project, &model)
            .ok_or_else(|| not_found(format!("saved model `{model}` has no active version")))?,
        n => n.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "version `{n}` is neither a version number nor `active`"
            ))
        })?,
    };
    if models
        .version(&project, &model, number)
        .map_err(ApiError::from)?
        .is_none()
    {
        return Err(not_found(format!(
            "saved model `{model}` has no version {number}"
        )));
    }
    let data = s.clone();
    let body = blocking_body(move |out| {
        data.data
            .models
            .pack(&project, &model, number, out)
            .map_err(|e| e.to_string())
    });
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, TAR.parse().expect("static header"));
    headers.insert(
        "x-capstan-model-version",
        number.to_string().parse().expect("a number"),
    );
    Ok((headers, body).into_response())
}

pub async fn stage_evaluation(
    State(s): State<AppState>,
    principal: Principal,
    ApiPath((project, model)): ApiPath<(String, String)>,
    StrictJson(body): StrictJson,
) -> Result<Json<Value>, ApiError> {
    let stage = activity_only(&principal, &s, &project, &model, false, "evaluations")?;
    known_model(&s, &project, &model)?;
    let Value::Object(mut row) = body else {
        return Err(ApiError::invalid(
            "an evaluation is a JSON object (its metrics, rows and model version)",
        ));
    };
    if let Principal::Activity { id, recipe, .. } = &principal {
        row.insert("job".into(), json!(id.job));
        row.insert("recipe".into(), json!(recipe));
    }
    row.insert(
        "at_ms".into(),
        json!(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        ),
    );
    s.data
        .models
        .stage_evaluation(&project, &model, &stage, &Value::Object(row))
        .map_err(ApiError::from)?;
    Ok(Json(
        json!({"project": project, "model": model, "staged": true}),
    ))
}
