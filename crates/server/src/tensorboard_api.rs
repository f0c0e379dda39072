//! TensorBoard event files, kept with the job that wrote them.
//!
//! - `PUT /api/v1/jobs/{id}/activities/{index}/tensorboard`: an activity's event files (what
//!   its recipe wrote to `capstan.tensorboard_dir()`), as a tar of that folder; each upload
//!   replaces the previous one whole (the runtime uploads now and then while the recipe runs,
//!   and at its end). Only the activity itself, with its own token.
//! - `GET /api/v1/jobs/{id}/tensorboard`: every activity's event files as one tar, one folder per
//!   activity (its name: TensorBoard's run), for whoever may see the job. `capstan tensorboard`
//!   serves them.
//!
//! They live in the activity's folder under the instance's state (`tensorboard/`), which a
//! recipe never reaches itself: the files travel through the API from a local process, a
//! container or a pod alike, and stay when the container or pod is gone.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::data_api::{Principal, blocking_body};
use crate::{ApiError, ApiPath, AppState, Auth, parse_id};

const TAR: &str = "application/x-tar";
/// The folder of an activity's event files, in its activity folder.
const FOLDER: &str = "tensorboard";

fn not_found(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

pub async fn upload(
    State(s): State<AppState>,
    principal: Principal,
    ApiPath((id, index)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let job = parse_id(&id)?;
    let index: i64 = index
        .parse()
        .ok()
        .filter(|i| *i >= 0 && index.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{}` is not an activity index (a whole number from 0)",
                index.escape_debug()
            ))
        })?;
    let Principal::Activity { id: me, .. } = &principal else {
        return Err(ApiError::forbidden(
            "TensorBoard event files come from the job's activities, not from users",
        ));
    };
    if (me.job, me.idx) != (job, index) {
        return Err(ApiError::forbidden(format!(
            "activity {}-{} may upload only its own event files",
            me.job, me.idx
        )));
    }
    crate::models_api::require_tar(&headers, "event files")?;
    let dir = s
        .engine
        .activity(job, index)
        .and_then(|a| a.dir)
        .map(PathBuf::from)
        .ok_or_else(|| not_found(format!("activity {job}-{index} has no folder yet")))?;
    let reader = crate::models_api::body_reader(body);
    let attempt = me.attempt;
    let files = tokio::task::spawn_blocking(move || replace(&dir, attempt, reader))
        .await
        .map_err(|e| ApiError::internal("the upload failed", &e))?
        .map_err(|e| match e {
            capstan_data::DataError::Io { ref source, .. }
                if source.kind() != std::io::ErrorKind::PermissionDenied
                    && source.kind() != std::io::ErrorKind::StorageFull =>
            {
                ApiError::bad_request(format!("the upload is not a folder as a tar: {source}"))
            }
            other => ApiError::from(other),
        })?;
    Ok(Json(json!({"job": job, "activity": index, "files": files})))
}

/// Unpacks an upload beside the activity's event files, then puts it in their place: a reader
/// sees the previous upload or this one, whole.
fn replace(dir: &Path, attempt: i64, upload: impl std::io::Read) -> capstan_data::Result<usize> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let fresh = dir.join(format!(".{FOLDER}-{attempt}-{nanos}"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| capstan_data::DataError::Io { path, source }
    };
    std::fs::create_dir_all(&fresh).map_err(io(&fresh))?;
    let files = match capstan_data::models::unpack_tar(&fresh, upload) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&fresh);
            return Err(e);
        }
    };
    let target = dir.join(FOLDER);
    let old = dir.join(format!(".{FOLDER}-old-{nanos}"));
    if target.exists() {
        std::fs::rename(&target, &old).map_err(io(&target))?;
    }
    std::fs::rename(&fresh, &target).map_err(io(&target))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(files)
}

pub async fn download(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let detail = s.engine.job_detail(&c, id, false).await?;
    // The latest attempt of each activity that kept event files, under its name.
    let kept: Vec<(String, PathBuf)> = detail
        .activities
        .iter()
        .filter_map(|a| {
            let dir = PathBuf::from(a.dir.as_ref()?).join(FOLDER);
            dir.is_dir().then(|| (a.name(), dir))
        })
        .collect();
    if kept.is_empty() {
        return Err(not_found(format!(
            "job {id} kept no TensorBoard event files (a recipe writes them to capstan.tensorboard_dir())"
        )));
    }
    let body = blocking_body(move |out| {
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(false);
        for (name, dir) in &kept {
            tar.append_dir_all(name, dir).map_err(|e| e.to_string())?;
        }
        tar.into_inner().map(|_| ()).map_err(|e| e.to_string())
    });
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, TAR.parse().expect("static header"));
    Ok((headers, body).into_response())
}
