"""Computes vigil's compliance scorecard independently of vigil: reads the observations, events
and acknowledgements topics from the beginning with confluent-kafka, decodes the Avro records
with fastavro (single-object encoding, vigil's default framing), and prints the scorecard CSV
that `vigil console` serves at /scorecard.csv for the same days (UTC, inclusive):

  scorecard.py BROKERS OBSERVATIONS_TOPIC EVENTS_TOPIC ACKS_TOPIC FROM_DAY TO_DAY [SITE...]

The definitions (README, "The console"): a frame counts once however often it was judged (by
its position on the frames topic); per site, day and rule, frames with verdict compliant or
violation are judged, the share is compliant / judged; an episode counts on the day it opened
(event time); times to resolve and to acknowledge run from its opening, medians in seconds
(mean of the middle two); the first acknowledgement of an episode counts; cameras offline are
cameras that sent frames to the site on some day of the period but none that day. With SITE
arguments only those sites are printed (a manager's view).
"""
import datetime
import io
import json
import statistics
import sys
import uuid
from collections import defaultdict

import fastavro
from confluent_kafka import Consumer, TopicPartition

ROOT = __file__.rsplit("/tests/tools/", 1)[0]


def schema(name):
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "logicalType"}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    # Epoch milliseconds stay integers: the logical types are dropped before parsing.
    return fastavro.parse_schema(strip(json.load(open(f"{ROOT}/schemas/{name}.avsc"))))


def read_all(brokers, topic, sch):
    """Every record of `topic`, decoded, in partition order (partitions one after another)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"scorecard-{uuid.uuid4()}",
                  "enable.auto.commit": False})
    meta = c.list_topics(topic, timeout=10).topics[topic]
    out = []
    for p in sorted(meta.partitions):
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high <= low:
            continue
        c.assign([TopicPartition(topic, p, low)])
        got = 0
        while got < high - low:
            m = c.poll(10)
            if m is None:
                sys.exit(f"{topic}:{p}: stalled at {got} of {high - low}")
            if m.error():
                continue
            got += 1
            data = m.value()
            if data[:2] != b"\xc3\x01":
                sys.exit(f"{topic}:{p}:{m.offset()}: not single-object Avro")
            out.append(fastavro.schemaless_reader(io.BytesIO(data[10:]), sch))
    c.close()
    return out


def day(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d")


def secs(values):
    return f"{statistics.median(values) / 1000:.1f}" if values else ""


def main():
    brokers, obs_topic, ev_topic, ack_topic, first, last, *sites = sys.argv[1:]
    judged = defaultdict(lambda: [0, 0])  # (site, day, rule) -> [compliant, violation]
    cameras = defaultdict(set)  # (site, day) -> cameras
    seen = set()
    for o in read_all(brokers, obs_topic, schema("observation")):
        src = (o["source"]["topic"], o["source"]["partition"], o["source"]["offset"])
        if src in seen:
            continue
        seen.add(src)
        d = day(o["captured_at_ms"])
        cameras[(o["site"], d)].add(o["camera"])
        for r in o["rules"]:
            if r["verdict"] == "compliant":
                judged[(o["site"], d, r["rule"])][0] += 1
            elif r["verdict"] == "violation":
                judged[(o["site"], d, r["rule"])][1] += 1
    episodes = {}
    for e in read_all(brokers, ev_topic, schema("violation_event")):
        ep = episodes.setdefault(e["episode_id"], {"site": e["site"], "opened_at": e["opened_at"]})
        if e["kind"] == "resolved":
            ep["resolved_at"] = e["resolved_at"] if e["resolved_at"] is not None else e["event_time"]
    acked = {}
    for a in read_all(brokers, ack_topic, schema("acknowledgement")):
        acked.setdefault(a["episode_id"], a["acked_at"])
    days = defaultdict(lambda: {"opened": 0, "resolve": [], "ack": []})
    for eid, ep in episodes.items():
        k = (ep["site"], day(ep["opened_at"]))
        days[k]["opened"] += 1
        if "resolved_at" in ep:
            days[k]["resolve"].append(ep["resolved_at"] - ep["opened_at"])
        if eid in acked:
            days[k]["ack"].append(acked[eid] - ep["opened_at"])
    in_period = lambda d: first <= d <= last
    keys = {(s, d) for (s, d, _) in judged} | set(days) | set(cameras)
    keys = {k for k in keys if in_period(k[1]) and (not sites or k[0] in sites)}
    known = defaultdict(set)
    for (s, d), cams in cameras.items():
        if in_period(d):
            known[s] |= cams
    print("site,day,rule,compliant_frames,judged_frames,compliant_share,episodes_opened,"
          "median_resolve_secs,median_ack_secs,cameras_seen,cameras_offline")
    for s, d in sorted(keys):
        f = days[(s, d)]
        seen_n = len(cameras[(s, d)])
        tail = f"{f['opened']},{secs(f['resolve'])},{secs(f['ack'])},{seen_n},{len(known[s]) - seen_n}"
        rules = sorted((r, c, v) for (s2, d2, r), (c, v) in judged.items() if (s2, d2) == (s, d))
        for r, c, v in rules or [("", 0, 0)]:
            share = f"{c / (c + v):.4f}" if c + v else ""
            print(f"{s},{d},{r},{c},{c + v},{share},{tail}")


if __name__ == "__main__":
    main()
