package main

import (
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/urfave/cli/v2"
)

// kafkaFlags are the flags that reach a Kafka cluster.
func kafkaFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "brokers", Value: cli.NewStringSlice("127.0.0.1:9092"), EnvVars: []string{"KBRIDGE_BROKERS"},
			Usage: "Kafka bootstrap brokers, host:port, comma-separated"},
		&cli.BoolFlag{Name: "kafka-tls", EnvVars: []string{"KBRIDGE_KAFKA_TLS"}, Usage: "connect to Kafka with TLS"},
		&cli.StringFlag{Name: "kafka-tls-ca", EnvVars: []string{"KBRIDGE_KAFKA_TLS_CA"}, Usage: "PEM `FILE` of the CA that signed the brokers' certificates (default: system roots; needs --kafka-tls)"},
		&cli.BoolFlag{Name: "kafka-tls-insecure", EnvVars: []string{"KBRIDGE_KAFKA_TLS_INSECURE"}, Usage: "do not verify the brokers' certificates (testing only; not with --kafka-tls-ca)"},
		&cli.StringFlag{Name: "kafka-sasl", EnvVars: []string{"KBRIDGE_KAFKA_SASL"}, Usage: "SASL mechanism: plain, scram-sha-256 or scram-sha-512 (default: none); plain sends the password as it is: use it with --kafka-tls"},
		&cli.StringFlag{Name: "kafka-username", EnvVars: []string{"KBRIDGE_KAFKA_USERNAME"}, Usage: "SASL user name"},
		&cli.StringFlag{Name: "kafka-password", EnvVars: []string{"KBRIDGE_KAFKA_PASSWORD"}, Usage: "SASL password (prefer --kafka-password-file or the environment variable: flags show in ps)"},
		&cli.StringFlag{Name: "kafka-password-file", EnvVars: []string{"KBRIDGE_KAFKA_PASSWORD_FILE"}, Usage: "read the SASL password from `FILE` (its first line); keeps it out of ps and the environment"},
	}
}

// kafkaSecurity reads the TLS and SASL flags; problems are appended to probs.
func kafkaSecurity(c *cli.Context, probs *[]string) (*tls.Config, sasl.Mechanism) {
	t, err := tlsConfig(c.Bool("kafka-tls"), c.Bool("kafka-tls-insecure"), c.String("kafka-tls-ca"))
	if err != nil {
		*probs = append(*probs, "--kafka-tls-ca: "+err.Error())
	}
	if c.Bool("kafka-tls-insecure") && c.String("kafka-tls-ca") != "" {
		*probs = append(*probs, "--kafka-tls-ca and --kafka-tls-insecure contradict each other: with --kafka-tls-insecure no certificate is checked; drop one")
	}
	if !c.Bool("kafka-tls") {
		for _, f := range []string{"kafka-tls-ca", "kafka-tls-insecure"} {
			if c.IsSet(f) {
				*probs = append(*probs, fmt.Sprintf("--%s is set but --kafka-tls is not: add --kafka-tls", f))
			}
		}
	}
	mech := strings.ToLower(c.String("kafka-sasl"))
	user, pass := c.String("kafka-username"), c.String("kafka-password")
	if f := c.String("kafka-password-file"); f != "" {
		switch pw, err := readSecretFile(f); {
		case err != nil:
			*probs = append(*probs, flagSource(c, "kafka-password-file", "KBRIDGE_KAFKA_PASSWORD_FILE")+": "+err.Error())
		case pass != "":
			*probs = append(*probs, flagSource(c, "kafka-password", "KBRIDGE_KAFKA_PASSWORD")+" and "+
				flagSource(c, "kafka-password-file", "KBRIDGE_KAFKA_PASSWORD_FILE")+": give one of them")
		default:
			pass = pw
		}
	}
	if mech == "" {
		if user != "" || pass != "" {
			*probs = append(*probs, "--kafka-username/--kafka-password are set but --kafka-sasl is not: add --kafka-sasl plain, scram-sha-256 or scram-sha-512")
		}
		return t, nil
	}
	if user == "" {
		*probs = append(*probs, fmt.Sprintf("--kafka-sasl %s needs --kafka-username", mech))
	}
	if pass == "" && c.String("kafka-password-file") == "" {
		*probs = append(*probs, fmt.Sprintf("--kafka-sasl %s needs a password: --kafka-password-file, KBRIDGE_KAFKA_PASSWORD or --kafka-password", mech))
	}
	switch mech {
	case "plain":
		if t == nil {
			// PLAIN sends the password as it is: without TLS, anyone on the
			// path reads it. Allowed (a trusted network, a sidecar that
			// encrypts), but not silently.
			if log, err := newLogger(c); err == nil {
				log.Warn("--kafka-sasl plain without --kafka-tls: the Kafka password crosses the network unencrypted; add --kafka-tls, or use scram-sha-512")
			}
		}
		return t, plain.Mechanism{Username: user, Password: pass}
	case "scram-sha-256", "scram-sha-512":
		algo := scram.SHA256
		if mech == "scram-sha-512" {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, user, pass)
		if err != nil {
			*probs = append(*probs, fmt.Sprintf("--kafka-sasl %s: %v", mech, err))
			return t, nil
		}
		return t, m
	}
	*probs = append(*probs, fmt.Sprintf("--kafka-sasl %q: want plain, scram-sha-256 or scram-sha-512", mech))
	return t, nil
}

// splitList flattens comma-separated values of a string slice flag.
func splitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}
