"""What each reliability test tried and what "lost" would mean: the rows of docs/reliability.md
(benchmarks/reliability.py). A test not listed still appears, under "Other"."""

from __future__ import annotations

# test function -> (section, what was tried, what "lost" would mean). Anything not listed still
# appears, under "Other".
CATALOGUE: dict[str, tuple[str, str, str]] = {
    # --- faults (real worker processes) ---
    "test_redis_restart_with_jobs_queued_and_running": (
        "Faults",
        "Redis (AOF on) stopped and started again while 2 workers run jobs and 3 wait: SIGTERM, "
        "SIGKILL, or down 3 s, past the running jobs' claim lease (they are requeued and their "
        "first runs stop); 3 restarts per run",
        "jobs lost, failed or stuck; a job run twice at once; a worker that stops taking jobs",
    ),
    "test_an_ack_that_fails_while_redis_is_down_frees_the_prefetch_slot": (
        "Faults",
        "the broker transport alone: a message acknowledged while Redis is down (kombu's own "
        "transport then never frees the worker's one prefetch slot)",
        "a worker idle for good after a Redis restart",
    ),
    "test_a_job_whose_message_was_lost_before_its_claim_completes_once": (
        "Faults",
        "a queued job's Celery message removed from the broker before any worker claimed it (what a "
        "Redis crash, then the receiving worker's death, leaves); a worker's beat sends it again; "
        "then the old message pushed back; 3 per run",
        "the job never run, run twice, or completed twice",
    ),
    "test_three_api_processes_never_admit_more_than_the_cap": (
        "Faults",
        "48 submissions at once for one key with room for 4, 16 through each of 3 API processes "
        "(`hyv serve --workers 0`) on one Redis; 3 keys per run",
        "more than 4 jobs admitted or created for the key",
    ),
    "test_a_worker_frozen_past_its_lease_cannot_write_into_the_new_owners_job": (
        "Faults",
        "a busy worker frozen (SIGSTOP) past its claim lease; another worker requeues, runs and "
        "completes the job; the frozen one resumes (SIGCONT); 3 per run",
        "any write of the woken run into the job (its record differs from the new owner's result, "
        "version included) or its video file",
    ),
    "test_a_failed_rank_requeues_the_job_once_and_the_restarted_group_finishes_it": (
        "Faults",
        "a worker group of 2 processes (gloo, `HYV_SP_DEGREE=2`) whose follower is SIGKILLed, or "
        "frozen (SIGSTOP) past the group's 8 s collective timeout, mid-denoise",
        "the job lost, failed or run twice; a rank left hanging; the group not restarted",
    ),
    "test_tls_redis_restart_with_jobs_queued_and_running": (
        "Faults",
        "Redis with TLS only (rediss://, certificates made by the test, AOF on) stopped and started "
        "again while 2 workers run jobs and 3 wait: SIGTERM, SIGKILL, or down 3 s, past the running "
        "jobs' claim lease; 2 restarts per run, then both workers must run a job at once",
        "jobs lost, failed or stuck; a job run twice at once; a worker that stops taking jobs",
    ),
    "test_an_ack_that_fails_while_tls_redis_is_down_frees_the_prefetch_slot": (
        "Faults",
        "the broker transport alone over TLS (rediss://): a message acknowledged while Redis is "
        "down (kombu's own transport then never frees the worker's one prefetch slot)",
        "a worker idle for good after a Redis restart",
    ),
    "test_api_restart_while_streaming_resumes_with_range": (
        "Faults",
        "the API process SIGKILLed while a client streams a rendering video, started again; the "
        "client resumes with `Range: bytes=<received>-` once the job completed, or at once while "
        "it still renders (206 either way: the growing file followed from that byte); 2 per run",
        "bytes missing, duplicated or different from the final MP4; the job disturbed",
    ),
    "test_storage_full_or_unwritable_fails_the_job_cleanly": (
        "Faults",
        "the video's storage full or unwritable mid-job: a 4 KiB RLIMIT_FSIZE on the worker's "
        "pool process (EFBIG), a full tmpfs (ENOSPC), a read-only tmpfs (EROFS); then room again; "
        "3 per run",
        "a job not failed with `storage_error`; a partial file left; the worker down or not "
        "completing the next job",
    ),
    "test_a_job_over_the_memory_limit_fails_and_the_worker_recovers": (
        "Faults",
        "a job needing ~370 MB on a worker with `job_memory_limit_mb=200` (RLIMIT_DATA of its "
        "pool process); then a small job; 5 per run",
        "a job not failed with `out_of_memory`; the worker down or not completing the next job",
    ),
    "test_a_worker_that_cannot_load_keeps_jobs_queued": (
        "Faults",
        "a worker whose weights folder is missing, or whose DiT weights file is truncated, alone "
        "for 2 s with 3 jobs submitted through the API; then a good worker; 2 per run",
        "/readyz not 503 or not saying why; a job failed, lost or run twice",
    ),
    "test_sigterm_finishes_the_job_within_the_grace": (
        "Faults",
        "SIGTERM to a busy worker's main process (`docker stop`, Kubernetes: Celery's warm shutdown) "
        "or to every process of it (systemd's default, `hyv serve`); 2 per run",
        "the job not finished by that worker within its shutdown grace; the worker not exiting",
    ),
    "test_past_its_grace_the_job_goes_back_to_the_front_of_its_queue": (
        "Faults",
        "SIGTERM (main process or every process) to the only worker, with a half-second shutdown "
        "grace, a job running and one queued behind it; then a new worker; 2 per run",
        "the job lost, run twice or left `in_progress`; not first in line (queued, position 1) or "
        "not run before the job behind it",
    ),
    "test_a_killed_workers_job_is_taken_back_at_once": (
        "Faults",
        "a busy worker SIGKILLed half a second after its SIGTERM (`launcher.stop_worker`), claims "
        "leased for 10 min; a second worker is running; 2 per run",
        "the job not requeued within 15 s (its claim names processes that are gone); lost, run twice "
        "at once or completed twice",
    ),
    "test_ctrl_c_on_hyv_serve_finishes_or_requeues_the_running_job": (
        "Faults",
        "Ctrl-C (SIGINT) to a real `hyv serve` with a job running and one queued, with the default "
        "or a half-second shutdown grace, or SIGKILL to all its processes; then `hyv serve` again",
        "a job lost, run twice, or `in_progress` while nothing runs it; the running job not first "
        "after the restart; a second MP4",
    ),
    "test_worker_killed_mid_job_is_redelivered_and_completed": (
        "Faults",
        "SIGKILL mid-denoise: the worker's pool process (like the OOM killer), or the whole worker "
        "process group; a second worker is running",
        "jobs lost or stuck `in_progress`; jobs run twice at once",
    ),
    "test_job_longer_than_visibility_timeout_runs_once": (
        "Faults",
        "a job ~3x longer than the broker's visibility timeout (Redis redelivers it to a second, idle "
        "worker while the first still runs it)",
        "jobs run twice; jobs lost",
    ),
    # --- hostile input ---
    "test_bad_image_multipart": (
        "Hostile input",
        "bad and odd images as the multipart `input_reference` file",
        "service health (a valid request afterwards)",
    ),
    "test_bad_image_json_data_url": (
        "Hostile input",
        "the same images as a base64 data URL in a JSON body",
        "service health",
    ),
    "test_empty_image_file": ("Hostile input", "a 0-byte image file", "service health"),
    "test_bad_data_url": (
        "Hostile input",
        "bad data URLs, remote URLs (SSRF: never fetched), file: URLs",
        "service health",
    ),
    "test_one_megabyte_prompt": ("Hostile input", "a 1 MB prompt (JSON and multipart)", "service health"),
    "test_control_and_rtl_characters_in_the_prompt": (
        "Hostile input",
        "control, NUL, CR/LF, RTL-override, zero-width, combining characters in the prompt "
        "(accepted and stored verbatim)",
        "service health; the prompt reads back unchanged",
    ),
    "test_only_whitespace_and_control_prompt": (
        "Hostile input",
        "a whitespace-only prompt",
        "service health",
    ),
    "test_bad_numbers_json": (
        "Hostile input",
        "NaN, ±Infinity, negative, zero, huge and fractional numbers in JSON (bare NaN literals too)",
        "service health",
    ),
    "test_bad_numbers_multipart": ("Hostile input", "the same numbers as multipart fields", "service health"),
    "test_utf16_json_is_read_or_refused": ("Hostile input", "a UTF-16 JSON body", "service health"),
    "test_malformed_json_body": (
        "Hostile input",
        "malformed JSON: not JSON, not an object, 100000-deep nesting, invalid UTF-8, lone UTF-16 "
        "surrogates, a 100000-digit integer, extra and wrongly typed fields, empty",
        "service health",
    ),
    "test_malformed_multipart_body": (
        "Hostile input",
        "malformed multipart: no or wrong boundary, unterminated, garbage, no Content-Disposition",
        "service health",
    ),
    "test_too_many_multipart_fields": ("Hostile input", "200 multipart fields", "service health"),
    "test_two_files_and_a_foreign_file_field": (
        "Hostile input",
        "two image files; a file field named `../../etc/passwd`",
        "service health",
    ),
    "test_oversized_multipart_with_content_length_is_413": (
        "Hostile input",
        "a multipart body over the body limit (413)",
        "service health",
    ),
    "test_oversized_chunked_body_is_413": (
        "Hostile input",
        "a chunked body (no Content-Length) over the body limit (413 while it streams)",
        "service health",
    ),
    "test_upload_over_the_upload_limit_is_413": (
        "Hostile input",
        "an image over the upload limit, as a file and as a data URL (413)",
        "service health",
    ),
    "test_lying_content_length_smaller_than_body": (
        "Hostile input",
        "Content-Length: 10 with a 3 MB body (request smuggling)",
        "the rest is never run as a request",
    ),
    "test_wrong_content_type_is_415": (
        "Hostile input",
        "wrong or missing Content-Type (415)",
        "service health",
    ),
    "test_hostile_video_ids_are_404": (
        "Hostile input",
        "ids with `../`, `%2F`, NUL, CR/LF, RTL, `*`, 5000 characters on GET, content, events and DELETE",
        "files outside the data dir; service health",
    ),
    "test_raw_traversal_paths_never_leak_files": (
        "Hostile input",
        "raw (un-normalized) `../` and NUL paths under /v1/videos and /web",
        "file contents leaked",
    ),
    "test_header_injection_is_refused_or_harmless": (
        "Hostile input",
        "CR, LF, CRLF, NUL and obs-fold in Idempotency-Key and Authorization (raw socket)",
        "injected response headers; service health",
    ),
    "test_odd_idempotency_keys": (
        "Hostile input",
        "empty, 256, 60000-character, latin-1, high-byte, tab and space-padded Idempotency-Keys",
        "service health",
    ),
    "test_idempotency_key_is_not_reflected_into_headers": (
        "Hostile input",
        "a percent-encoded CRLF Idempotency-Key reused with another body (409)",
        "injected response headers",
    ),
    "test_odd_request_headers_on_reads": (
        "Hostile input",
        "huge or nonsense Range, If-None-Match and Accept on reads",
        "service health",
    ),
    "test_query_parameters_are_validated": (
        "Hostile input",
        "negative, NaN, huge `limit`; bad `order`, `after`, `variant`",
        "service health",
    ),
    "test_numeric_hosts_are_read_like_the_c_resolver": (
        "Hostile input",
        "28 numeric host spellings (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`, "
        "`017700000001`...) and near misses, read by the webhook policy and by inet_aton",
        "a spelling the resolver reads as an address that the policy reads otherwise",
    ),
    "test_hostile_webhook_urls_are_refused_by_the_policy": (
        "Hostile input",
        "60 hostile `webhook_url`s (loopback, RFC 1918, CGNAT, link-local, cloud metadata, `[::1]`, "
        "IPv4-mapped, NAT64, 6to4, Teredo, decimal/hex/octal spellings, `localhost`, userinfo and "
        "backslash confusion, file:/gopher:) through the address policy",
        "a hostile target accepted",
    ),
    "test_refusal_reasons_name_the_class": (
        "Hostile input",
        "addresses of each refused class and public ones (IPv4, IPv6, IPv4 embedded in IPv6)",
        "a refused class let through; a public address refused",
    ),
    "test_public_addresses_are_accepted_and_kept_as_checked": (
        "Hostile input",
        "public IPv4/IPv6 webhook URLs with credentials, port and query",
        "the connection URL differing from the checked address",
    ),
    "test_every_resolved_address_is_checked_and_https_keeps_its_name": (
        "Hostile input",
        "a name resolving to a public and a loopback address; https to a name",
        "one bad address overlooked; TLS server name not the URL's host",
    ),
    "test_the_allow_list": (
        "Hostile input",
        "`HYV_WEBHOOK_ALLOWED_HOSTS` entries: names, addresses, networks, a network around the "
        "metadata address, malformed entries",
        "more opened than listed; metadata opened by a network",
    ),
    "test_the_allow_list_setting": (
        "Hostile input",
        "the allow-list setting as comma-separated, JSON and a URL (refused)",
        "a malformed entry accepted",
    ),
    "test_hostile_webhook_urls_are_refused_at_submit": (
        "Hostile input",
        "the 60 hostile `webhook_url`s submitted to the live API (real Redis), a loopback trap "
        "receiver on their port",
        "a 201, a job queued, or a request reaching the trap",
    ),
    "test_allow_listed_loopback_is_accepted_at_submit": (
        "Hostile input",
        "an allow-listed loopback `webhook_url` and a loopback neighbour not listed",
        "the listed one refused; the other accepted",
    ),
    "test_hostile_webhook_urls_are_never_delivered": (
        "Hostile input",
        "the 60 hostile `webhook_url`s handed to the delivery code (as if accepted earlier), a "
        "loopback trap receiver (IPv4 and IPv6) on their port",
        "a request reaching the trap",
    ),
    "test_the_worker_call_refuses_a_loopback_webhook": (
        "Hostile input",
        "a finished job's loopback webhook (`127.0.0.1`, `localhost`) through the worker's call",
        "a request reaching the trap",
    ),
    "test_delivery_resolves_again_and_connects_to_the_checked_address": (
        "Hostile input",
        "DNS rebinding: a name public at submit and loopback at delivery; a name only the checked "
        "resolver knows, whose first address takes no connection",
        "a request reaching the trap; the name resolved a second time",
    ),
    "test_redirects_are_not_followed": (
        "Hostile input",
        "an allow-listed receiver answering 301/302/303/307/308 to a loopback address not listed",
        "the redirect followed or retried",
    ),
    "test_allow_listed_receiver_gets_signed_deliveries": (
        "Hostile input",
        "an allow-listed loopback receiver (by name and by network)",
        "a delivery missing or not verifying",
    ),
    # --- auth ---
    "test_keys_are_compared_in_constant_time": (
        "Auth",
        "the key check's code: hmac.compare_digest against every key, no early exit, no ==/in",
        "timing side channel",
    ),
    "test_keyring_behaviour": (
        "Auth",
        "missing, malformed, Basic, truncated, extended, upper-cased keys",
        "a wrong key let in; a key echoed",
    ),
    "test_settings_never_show_secrets": (
        "Auth",
        "repr()/str() of the settings",
        "keys or webhook secret shown",
    ),
    "test_api_keys_never_reach_any_log_or_data_file": (
        "Auth",
        "a real `hyv serve` (Redis, worker, API) at DEBUG log level; a job run to the end; right, "
        "wrong and malformed keys, keys in other headers and in the query string; every log line and "
        "every file under the data dir grepped for the keys",
        "a key in any log or file",
    ),
    "test_another_keys_job_is_a_404_like_no_job": (
        "Auth",
        "key B on key A's job: status, content, thumbnail, events, delete",
        "another key's job seen, streamed or deleted; its existence revealed",
    ),
    "test_lists_and_idempotency_keys_are_per_key": (
        "Auth",
        "key B listing, paging after A's id, and reusing A's Idempotency-Key",
        "another key's job seen or replayed",
    ),
    "test_every_v1_route_needs_a_valid_key": (
        "Auth",
        "no, wrong, Basic, scheme-less, empty and doubled keys on every /v1 route",
        "a route served without a valid key",
    ),
    "test_cors_closed_by_default": (
        "Auth",
        "foreign Origins (simple and preflight) with no CORS configured",
        "Access-Control-Allow-Origin sent",
    ),
    "test_cors_open_only_to_configured_origins": (
        "Auth",
        "the configured Origin, and foreign ones (look-alike suffix, `null`)",
        "a foreign Origin allowed",
    ),
    # --- schema ---
    "test_every_operation_is_covered": ("OpenAPI (schemathesis)", "every documented operation found", "-"),
    "test_operation_matches_the_schema_and_never_5xx": (
        "OpenAPI (schemathesis)",
        "generated schema-valid (positive) and schema-breaking (negative) requests on every "
        "operation; checks: no 5xx, status codes, content types, headers and bodies as documented, "
        "negative data refused, auth not ignored",
        "a 5xx or an undocumented response",
    ),
}
