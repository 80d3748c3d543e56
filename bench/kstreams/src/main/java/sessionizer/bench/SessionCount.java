package sessionizer.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.sun.management.OperatingSystemMXBean;
import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.SessionWindows;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.state.SessionStore;

/**
 * (e) Kafka Streams: the sessions the Quix contender computes, the Kafka Streams way.
 *
 * <p>Each record is decoded with Jackson and expanded into its events (a batch record into its
 * elements); records without a key and records that are not JSON are dropped. The events are
 * grouped by key into {@code SessionWindows.ofInactivityGapAndGrace(gap, 0)}, counted, and
 * {@code suppress(untilWindowCloses)} emits each session once, when it closes, to an output
 * topic. One stream thread; the session store and the suppression buffer have no changelog
 * (Quix runs with changelog topics off).
 *
 * <p>Timed like the Python contenders (bench/contenders/__init__.py): prints {@code BENCH READY
 * <monotonic s> <process CPU s>} at the first record and {@code BENCH DONE <monotonic s> <process
 * CPU s> <records> <events>} after the last one. {@code System.nanoTime()} is CLOCK_MONOTONIC on
 * Linux, the clock of Python's {@code time.monotonic()}.
 */
public final class SessionCount {
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final OperatingSystemMXBean OS =
      (OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();

  private static long records;
  private static long events;

  private SessionCount() {}

  static void report(String kind, Object... extra) {
    StringBuilder line = new StringBuilder("BENCH ").append(kind);
    line.append(String.format(" %.6f %.6f", System.nanoTime() / 1e9, OS.getProcessCpuTime() / 1e9));
    for (Object value : extra) {
      line.append(' ').append(value);
    }
    System.out.println(line);
    System.out.flush();
  }

  public static void main(String[] argv) throws Exception {
    String bootstrap = null;
    String topic = null;
    String output = null;
    String group = null;
    long total = 0;
    double gapSeconds = 30.0;
    for (int i = 0; i + 1 < argv.length; i += 2) {
      switch (argv[i]) {
        case "--bootstrap" -> bootstrap = argv[i + 1];
        case "--topic" -> topic = argv[i + 1];
        case "--output" -> output = argv[i + 1];
        case "--group" -> group = argv[i + 1];
        case "--records" -> total = Long.parseLong(argv[i + 1]);
        case "--gap-s" -> gapSeconds = Double.parseDouble(argv[i + 1]);
        case "--partitions" -> { } // the topic says how many
        default -> throw new IllegalArgumentException("unknown option " + argv[i]);
      }
    }
    if (bootstrap == null || topic == null || output == null || group == null || total <= 0) {
      throw new IllegalArgumentException(
          "usage: --bootstrap B --topic T --output O --group G --records N [--gap-s S]");
    }
    final long expected = total;
    final CountDownLatch done = new CountDownLatch(1);

    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, group);
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    props.put(StreamsConfig.STATE_DIR_CONFIG,
        Files.createTempDirectory("bench-kstreams-state-").toString());
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 5000);
    props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    props.put(StreamsConfig.consumerPrefix(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG), 6000);
    props.put(StreamsConfig.consumerPrefix(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG), 1000);

    StreamsBuilder builder = new StreamsBuilder();
    builder.stream(topic, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
        .flatMapValues((key, value) -> {
          long n = ++records;
          if (n == 1) {
            report("READY");
          }
          JsonNode parsed;
          try {
            parsed = value == null ? null : JSON.readTree(value);
          } catch (IOException e) {
            parsed = null;
          }
          List<JsonNode> out;
          if (parsed != null && parsed.isArray() && !parsed.isEmpty()) {
            out = new ArrayList<>(parsed.size());
            parsed.forEach(out::add);
          } else {
            out = Collections.singletonList(parsed);
          }
          events += out.size();
          if (n == expected) {
            report("DONE", n, events);
            done.countDown();
          }
          if (key == null || parsed == null) {
            return Collections.<JsonNode>emptyList();
          }
          return out;
        })
        .groupByKey(Grouped.keySerde(Serdes.ByteArray()))
        .windowedBy(SessionWindows.ofInactivityGapAndGrace(
            Duration.ofMillis(Math.round(gapSeconds * 1000)), Duration.ZERO))
        .count(Materialized.<byte[], Long, SessionStore<Bytes, byte[]>>as("session-counts")
            .withKeySerde(Serdes.ByteArray())
            .withValueSerde(Serdes.Long())
            .withLoggingDisabled())
        .suppress(Suppressed.untilWindowCloses(
            Suppressed.BufferConfig.unbounded().withLoggingDisabled()))
        .toStream()
        .map((window, count) -> KeyValue.pair(window.key(), count))
        .to(output, Produced.with(Serdes.ByteArray(), Serdes.Long()));

    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    streams.setUncaughtExceptionHandler(exc -> {
      exc.printStackTrace();
      done.countDown();
      return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
          .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
    });
    streams.start();
    done.await();
    streams.close(Duration.ofSeconds(10));
    streams.cleanUp();
  }
}
