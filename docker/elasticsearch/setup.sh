#!/bin/sh
# One-shot set-up of the compose full profile's Elasticsearch (run by the
# elasticsearch-setup service, in the Elasticsearch image, once the
# cluster answers): Kibana's own user gets its password, and Blaze's log
# shipper gets a user of its own that may only write the blaze-logs*
# indices and their template (least privilege: not the `elastic`
# superuser). Idempotent: run again, it sets the same passwords.
set -eu

es=${ELASTICSEARCH_URL:-http://elasticsearch:9200}
blaze_password=$(cat /run/secrets/elasticsearch/blaze_password)

call() {
  # $1 method, $2 path, $3 JSON body
  curl --fail --silent --show-error -u "elastic:${ELASTIC_PASSWORD}" \
    -X "$1" "$es$2" -H 'Content-Type: application/json' -d "$3" >/dev/null
}

tries=0
until curl --fail --silent -u "elastic:${ELASTIC_PASSWORD}" "$es/_cluster/health?wait_for_status=yellow&timeout=5s" >/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -le 60 ] || { echo "Elasticsearch did not answer" >&2; exit 1; }
  sleep 5
done

call POST /_security/user/kibana_system/_password "{\"password\":\"${KIBANA_PASSWORD}\"}"
call PUT /_security/role/blaze_logs \
  '{"cluster":["manage_index_templates","monitor"],"indices":[{"names":["blaze-logs*"],"privileges":["create_doc","create_index","auto_configure","view_index_metadata"]}]}'
call PUT /_security/user/blaze_logs "{\"password\":\"${blaze_password}\",\"roles\":[\"blaze_logs\"]}"
echo "Elasticsearch users ready: kibana_system, blaze_logs"
