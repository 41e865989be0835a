package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
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
		&cli.StringFlag{Name: "kafka-tls-ca", EnvVars: []string{"KBRIDGE_KAFKA_TLS_CA"}, Usage: "PEM file of the CA that signed the brokers' certificates (default: system roots)"},
		&cli.BoolFlag{Name: "kafka-tls-insecure", EnvVars: []string{"KBRIDGE_KAFKA_TLS_INSECURE"}, Usage: "do not verify the brokers' certificates (testing only)"},
		&cli.StringFlag{Name: "kafka-sasl", EnvVars: []string{"KBRIDGE_KAFKA_SASL"}, Usage: "SASL mechanism: plain, scram-sha-256 or scram-sha-512 (default: none)"},
		&cli.StringFlag{Name: "kafka-username", EnvVars: []string{"KBRIDGE_KAFKA_USERNAME"}, Usage: "SASL user name"},
		&cli.StringFlag{Name: "kafka-password", EnvVars: []string{"KBRIDGE_KAFKA_PASSWORD"}, Usage: "SASL password (prefer the environment variable: flags show in ps)"},
	}
}

// kafkaSecurity reads the TLS and SASL flags; problems are appended to probs.
func kafkaSecurity(c *cli.Context, probs *[]string) (*tls.Config, sasl.Mechanism) {
	t, err := tlsConfig(c.Bool("kafka-tls"), c.Bool("kafka-tls-insecure"), c.String("kafka-tls-ca"))
	if err != nil {
		*probs = append(*probs, err.Error())
	}
	mech := strings.ToLower(c.String("kafka-sasl"))
	user, pass := c.String("kafka-username"), c.String("kafka-password")
	switch mech {
	case "":
		return t, nil
	case "plain":
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

func loadCA(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--kafka-tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--kafka-tls-ca %s: no PEM certificate in it", file)
	}
	return pool, nil
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
