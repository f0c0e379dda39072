# capstan's R client: what an R recipe reads and writes, as data.frames.
#
# capstan loads this file into every R recipe (through R_PROFILE_USER), so recipes call
#
#   orders <- capstan_dataset("orders")
#   totals <- aggregate(amount ~ customer, data = orders, FUN = sum)
#   capstan_write_output("order_totals", totals)
#
# the same verbs as the Python client: the data API's address and the activity's token come
# from the activity's environment (CAPSTAN_API_URL, CAPSTAN_TOKEN_FILE). Data travels as CSV.
# It needs the curl package (Debian: r-cran-curl), which capstan's R base images include.

capstan_api <- function() {
  url <- Sys.getenv("CAPSTAN_API_URL")
  token_file <- Sys.getenv("CAPSTAN_TOKEN_FILE")
  if (url == "" || token_file == "") {
    stop("no capstan data API here: run the recipe with `capstan run`", call. = FALSE)
  }
  list(url = sub("/$", "", url), token = trimws(readLines(token_file, warn = FALSE)[1]))
}

capstan_project <- function(project) {
  if (is.null(project)) project <- Sys.getenv("CAPSTAN_PROJECT")
  if (project == "") stop("no project: pass project = or run the recipe with `capstan run`", call. = FALSE)
  project
}

capstan_fail <- function(res, what) {
  body <- rawToChar(res$content)
  m <- regmatches(body, regexec('"message":"((\\\\.|[^"\\\\])*)"', body))[[1]]
  message <- if (length(m) >= 2) gsub('\\\\"', '"', m[2]) else body
  kind <- if (res$status_code %in% c(401, 403)) "permission denied" else "capstan data API error"
  stop(sprintf("%s: %s (HTTP %d, %s)", kind, message, res$status_code, what), call. = FALSE)
}

capstan_dataset <- function(name, project = NULL, columns = NULL, limit = NULL) {
  api <- capstan_api()
  project <- capstan_project(project)
  query <- "format=csv"
  if (!is.null(columns)) query <- paste0(query, "&columns=", paste(columns, collapse = ","))
  if (!is.null(limit)) query <- paste0(query, "&limit=", limit)
  u <- sprintf("%s/api/v1/projects/%s/datasets/%s/data?%s", api$url, project, name, query)
  h <- curl::new_handle()
  curl::handle_setheaders(h, Authorization = paste("Bearer", api$token))
  res <- tryCatch(
    curl::curl_fetch_memory(u, handle = h),
    error = function(e) stop(sprintf("cannot reach the capstan data API at %s: %s", api$url, conditionMessage(e)), call. = FALSE)
  )
  if (res$status_code >= 300) capstan_fail(res, paste("reading", name))
  utils::read.csv(text = rawToChar(res$content), stringsAsFactors = FALSE)
}

capstan_write_output <- function(name, df, project = NULL) {
  api <- capstan_api()
  project <- capstan_project(project)
  tmp <- tempfile(fileext = ".csv")
  on.exit(unlink(tmp))
  utils::write.csv(df, tmp, row.names = FALSE, na = "")
  body <- readBin(tmp, "raw", file.info(tmp)$size)
  u <- sprintf("%s/api/v1/projects/%s/datasets/%s/data", api$url, project, name)
  h <- curl::new_handle(customrequest = "PUT", postfields = body)
  curl::handle_setheaders(h, Authorization = paste("Bearer", api$token), "Content-Type" = "text/csv")
  res <- tryCatch(
    curl::curl_fetch_memory(u, handle = h),
    error = function(e) stop(sprintf("cannot reach the capstan data API at %s: %s", api$url, conditionMessage(e)), call. = FALSE)
  )
  if (res$status_code >= 300) capstan_fail(res, paste("writing", name))
  invisible(nrow(df))
}
